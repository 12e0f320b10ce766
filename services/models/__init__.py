"""Pure model code: Step1 LM, audio tokenizer, token2wav. No network, no gRPC."""

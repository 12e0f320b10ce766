// Step-Audio realtime browser client: microphone → 16 kHz PCM16 frames → /v1/realtime,
// reply audio scheduled gaplessly with Web Audio, barge-in flushes playback at once.
// Plain JS, no build step, no external resources. Protocol: docs/protocol.md.
// With auth on (docs/security.md) the socket carries a short-lived client secret in the
// openai-insecure-api-key.<secret> subprotocol, as OpenAI's SDKs do from browsers.
'use strict';

const INPUT_RATE = 16000; // what we send (declared in session.update)
const OUTPUT_RATE = 24000; // what we ask for
const FRAME_SAMPLES = INPUT_RATE / 50; // 20 ms frames
const params = new URLSearchParams(location.search);
const TRANSPORT = params.get('transport') === 'binary' ? 'binary' : 'json';
const SUBPROTOCOL_KEY_PREFIX = 'openai-insecure-api-key.';
const MINTED_SECRET_S = 60; // a secret the page mints only has to open the socket at once
const SECRET_FORMAT = /^ek_[A-Za-z0-9_-]+$/;

// State the E2E test (and curious humans) can read: window.__stats in the console.
const stats = (window.__stats = {
  connected: false,
  authRequired: null, // learnt from the first GET /v1/voices: 401 → true, 200 → false
  secretsMinted: 0, // client secrets minted from a typed API key
  socketAttempts: 0,
  socketAuth: null, // how the last socket authenticated: "none" | "client_secret"
  voicesListed: false,
  sessionId: null,
  contextState: null,
  micRunning: false,
  captureMode: null, // "worklet" | "script-processor"
  inputRate: null, // the AudioContext rate the microphone is captured at
  framesSent: 0,
  speechStarted: 0,
  audioChunks: 0,
  audioSamples: 0,
  scheduledSeconds: 0,
  flushes: 0,
  flushedSources: 0, // scheduled chunks cut off by a flush (barge-in)
  ignoredChunks: 0, // audio of an interrupted reply that still arrived (should stay 0)
  responsesDone: 0,
  lastResponse: null,
  lastTimings: null,
  transcripts: [],
  errors: [],
  events: {},
  timeline: [], // [ms since page load, event type] of the non-delta events (the last 200)
  audioArrivals: [], // [ms since page load, seconds of audio] per reply chunk (the last 200)
});

const $ = (id) => document.getElementById(id);
const ui = {
  status: $('status'), connect: $('connect'), disconnect: $('disconnect'), mic: $('mic'),
  talk: $('talk'), meter: $('meter').firstElementChild, latency: $('latency'),
  timings: $('timings'), log: $('log'), errors: $('errors'), voice: $('voice'),
  instructions: $('instructions'), speculative: $('speculative'), ptt: $('ptt'),
  apply: $('apply'), textForm: $('text-form'), text: $('text'),
  auth: $('auth'), secret: $('secret'), apiKey: $('api-key'), authStatus: $('auth-status'),
  voiceNote: $('voice-note'),
};

let ws = null;
let connecting = false; // a client secret is being minted
let authProbe = null; // the first GET /v1/voices (tells whether the server needs a key)
let ctx = null; // one AudioContext for capture and playback
let player = null;
let mic = null; // {stream, source, node, sink}
let resampler = null;
let pending = new Int16Array(FRAME_SAMPLES);
let pendingLength = 0;
let lastSessionId = params.get('session_id');
let serverSession = null; // the last session.created/updated description
let currentResponse = null; // id of the reply being received
const muted = new Set(); // replies whose late audio is ignored (interrupted)
let userSpeaking = false;
let talking = false; // push-to-talk button held
let awaitingCommit = false; // push-to-talk: response.create once the turn is committed
let pendingUserEntry = null;
const entries = new Map(); // item/response id → log entry

// -- audio out --------------------------------------------------------------------------

class Player {
  constructor(context) {
    this.ctx = context;
    this.out = context.createGain();
    this.out.connect(context.destination);
    this.sources = new Set();
    this.nextTime = 0;
  }

  play(samples, rate) {
    if (!samples.length) return;
    const buffer = this.ctx.createBuffer(1, samples.length, rate);
    buffer.copyToChannel(samples, 0);
    const source = this.ctx.createBufferSource();
    source.buffer = buffer;
    source.connect(this.out);
    const now = this.ctx.currentTime;
    if (this.nextTime < now + 0.01) this.nextTime = now + 0.05; // (re)start with a small lead
    source.start(this.nextTime);
    this.nextTime += buffer.duration; // the next chunk starts exactly where this one ends
    this.sources.add(source);
    source.onended = () => {
      this.sources.delete(source);
      refreshStatus();
    };
    stats.scheduledSeconds += buffer.duration;
  }

  flush() {
    for (const source of this.sources) {
      source.onended = null;
      try { source.stop(); } catch (_) { /* not started yet */ }
      source.disconnect();
    }
    stats.flushes += 1;
    stats.flushedSources += this.sources.size;
    this.sources.clear();
    this.nextTime = 0;
  }

  get playing() { return this.sources.size > 0; }
}

function pcm16ToFloat(buffer) {
  const view = new DataView(buffer);
  const out = new Float32Array(buffer.byteLength >> 1);
  for (let i = 0; i < out.length; i++) out[i] = view.getInt16(i * 2, true) / 32768;
  return out;
}

function base64ToBuffer(b64) {
  const bin = atob(b64);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return bytes.buffer;
}

function onReplyAudio(buffer, rate, responseId) {
  if (muted.has(responseId || currentResponse)) {
    stats.ignoredChunks += 1;
    return;
  }
  const samples = pcm16ToFloat(buffer);
  stats.audioChunks += 1;
  stats.audioSamples += samples.length;
  stats.audioArrivals.push([Math.round(performance.now()), samples.length / rate]);
  if (stats.audioArrivals.length > 200) stats.audioArrivals.shift();
  if (player) player.play(samples, rate);
  refreshStatus();
}

// -- audio in -----------------------------------------------------------------------------

// Windowed-sinc low-pass + fractional-step resampler (streaming; e.g. 48 kHz → 16 kHz).
class Resampler {
  constructor(inRate, outRate) {
    this.step = inRate / outRate;
    this.half = this.step > 1 ? 8 * Math.ceil(this.step) : 0;
    const cutoff = 0.45 / Math.max(1, this.step); // in cycles per input sample
    this.taps = new Float32Array(2 * this.half + 1);
    let sum = 0;
    for (let k = -this.half; k <= this.half; k++) {
      const sinc = k === 0 ? 1 : Math.sin(2 * Math.PI * cutoff * k) / (2 * Math.PI * cutoff * k);
      const hann = 0.5 + 0.5 * Math.cos((Math.PI * k) / (this.half + 1));
      this.taps[k + this.half] = sinc * hann;
      sum += sinc * hann;
    }
    for (let i = 0; i < this.taps.length; i++) this.taps[i] /= sum;
    this.buf = new Float32Array(this.half); // history (silence before the start)
    this.pos = this.half; // index in buf of the next output sample
  }

  filtered(i) {
    let acc = 0;
    for (let k = 0; k < this.taps.length; k++) acc += this.taps[k] * this.buf[i - this.half + k];
    return acc;
  }

  push(input) {
    const buf = new Float32Array(this.buf.length + input.length);
    buf.set(this.buf);
    buf.set(input, this.buf.length);
    this.buf = buf;
    const out = [];
    let pos = this.pos;
    while (Math.floor(pos) + 1 + this.half < buf.length) {
      const i = Math.floor(pos);
      const frac = pos - i;
      const a = this.filtered(i);
      out.push(frac ? a + (this.filtered(i + 1) - a) * frac : a);
      pos += this.step;
    }
    const drop = Math.max(0, Math.floor(pos) - this.half);
    this.buf = buf.slice(drop);
    this.pos = pos - drop;
    return Float32Array.from(out);
  }
}

const WORKLET = `
class PcmCapture extends AudioWorkletProcessor {
  constructor() { super(); this.chunk = new Float32Array(Math.round(sampleRate / 50)); this.n = 0; }
  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (channel) {
      for (let i = 0; i < channel.length; i++) {
        this.chunk[this.n++] = channel[i];
        if (this.n === this.chunk.length) { this.port.postMessage(this.chunk.slice()); this.n = 0; }
      }
    }
    return true;
  }
}
registerProcessor('pcm-capture', PcmCapture);
`;

async function captureNode(source) {
  if (ctx.audioWorklet) {
    try {
      const url = URL.createObjectURL(new Blob([WORKLET], { type: 'application/javascript' }));
      await ctx.audioWorklet.addModule(url);
      URL.revokeObjectURL(url);
      const node = new AudioWorkletNode(ctx, 'pcm-capture', {
        numberOfInputs: 1, numberOfOutputs: 1, channelCount: 1, channelCountMode: 'explicit',
      });
      node.port.onmessage = (event) => onMicAudio(event.data);
      stats.captureMode = 'worklet';
      return node;
    } catch (err) {
      console.warn('AudioWorklet unavailable, using ScriptProcessor', err);
    }
  }
  const node = ctx.createScriptProcessor(1024, 1, 1);
  node.onaudioprocess = (event) => onMicAudio(event.inputBuffer.getChannelData(0).slice());
  stats.captureMode = 'script-processor';
  return node;
}

async function startMic() {
  if (mic) return;
  ensureAudio();
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
  });
  const source = ctx.createMediaStreamSource(stream);
  const node = await captureNode(source);
  const sink = ctx.createGain(); // keeps the capture node pulled by the graph, silently
  sink.gain.value = 0;
  source.connect(node);
  node.connect(sink);
  sink.connect(ctx.destination);
  mic = { stream, source, node, sink };
  resampler = new Resampler(ctx.sampleRate, INPUT_RATE);
  pendingLength = 0;
  stats.micRunning = true;
  stats.inputRate = ctx.sampleRate;
  ui.mic.textContent = 'Stop mic';
  ui.mic.setAttribute('aria-pressed', 'true');
  refreshStatus();
}

function stopMic() {
  if (!mic) return;
  mic.stream.getTracks().forEach((t) => t.stop());
  for (const node of [mic.source, mic.node, mic.sink]) node.disconnect();
  if (mic.node.port) mic.node.port.onmessage = null;
  mic = null;
  stats.micRunning = false;
  ui.mic.textContent = 'Start mic';
  ui.mic.setAttribute('aria-pressed', 'false');
  ui.meter.style.width = '0';
  refreshStatus();
}

function onMicAudio(block) {
  let energy = 0;
  for (let i = 0; i < block.length; i++) energy += block[i] * block[i];
  ui.meter.style.width = `${Math.min(100, Math.sqrt(energy / block.length) * 400)}%`;
  const samples = resampler.push(block);
  const sending = ws && ws.readyState === WebSocket.OPEN && (!pttMode() || talking);
  for (let i = 0; i < samples.length; i++) {
    const s = Math.max(-1, Math.min(1, samples[i]));
    pending[pendingLength++] = s < 0 ? s * 32768 : s * 32767;
    if (pendingLength === FRAME_SAMPLES) {
      if (sending) {
        ws.send(pending.buffer); // little-endian PCM16 on every platform browsers run on
        stats.framesSent += 1;
      }
      pending = new Int16Array(FRAME_SAMPLES);
      pendingLength = 0;
    }
  }
}

function ensureAudio() {
  if (!ctx) {
    ctx = new AudioContext();
    player = new Player(ctx);
    ctx.onstatechange = () => { stats.contextState = ctx.state; refreshStatus(); };
  }
  if (ctx.state === 'suspended') ctx.resume();
  stats.contextState = ctx.state;
}

// -- the socket -----------------------------------------------------------------------

// An error the page shows (in the Errors list, and beside the key fields when about a key).
class PageError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

function requireAuth() {
  stats.authRequired = true;
  ui.auth.hidden = false;
  if (!stats.voicesListed) {
    ui.voiceNote.hidden = false;
    ui.voiceNote.textContent = 'The voice list needs an API key (a client secret opens only ' +
      'the realtime socket): the server default voice is used.';
  }
}

function authStatus(text, isError) {
  ui.authStatus.textContent = text;
  ui.authStatus.classList.toggle('error', !!isError);
}

function authFailed(error) {
  showError({ code: error.code, message: error.message });
  authStatus(`${error.code}: ${error.message}`, true);
}

// A pasted client secret: its value (ek_…), or the whole JSON reply of the minting call,
// whose expires_at lets the page say "expired" before trying.
function pastedSecret(text) {
  let value = text;
  let expiresAt = null;
  if (text.startsWith('{')) {
    try {
      const reply = JSON.parse(text);
      value = String(reply.value || '');
      expiresAt = typeof reply.expires_at === 'number' ? reply.expires_at : null;
    } catch (_) {
      throw new PageError('invalid_client_secret', 'the pasted JSON does not parse: paste the ' +
        'value (ek_…) or the whole reply of POST /v1/realtime/client_secrets');
    }
  }
  if (!SECRET_FORMAT.test(value)) {
    throw new PageError('invalid_client_secret',
      'a client secret looks like ek_…; an API key goes in the API key field');
  }
  if (expiresAt !== null && expiresAt * 1000 <= Date.now()) {
    const when = new Date(expiresAt * 1000).toLocaleTimeString();
    throw new PageError('client_secret_expired', `this client secret expired at ${when}: get a new one`);
  }
  return { value, expiresAt, minted: false };
}

// The operator's API key → a short-lived client secret. The key goes in this one request
// (and the voice list's); it is read from its field each time and kept nowhere else.
async function mintSecret(apiKey) {
  let reply;
  try {
    reply = await fetch('/v1/realtime/client_secrets', {
      method: 'POST',
      cache: 'no-store',
      headers: { Authorization: `Bearer ${apiKey}`, 'Content-Type': 'application/json' },
      body: JSON.stringify({ expires_after: { anchor: 'created_at', seconds: MINTED_SECRET_S } }),
    });
  } catch (err) {
    throw new PageError('unreachable', `could not reach the controller: ${err.message}`);
  }
  const body = await reply.json().catch(() => ({}));
  if (!reply.ok) {
    const error = body.error || {};
    const what = reply.status === 401 ? 'the API key was refused'
      : `minting a client secret failed (HTTP ${reply.status})`;
    throw new PageError(error.code || `http_${reply.status}`, `${what}: ${error.message || reply.statusText}`);
  }
  stats.secretsMinted += 1;
  if (!stats.voicesListed) loadVoices(apiKey);
  return { value: body.value, expiresAt: body.expires_at, minted: true };
}

// null when the server needs no key; else {value, expiresAt, minted}.
async function socketCredential() {
  const pasted = ui.secret.value.trim();
  const apiKey = ui.apiKey.value.trim();
  if (pasted) return pastedSecret(pasted);
  if (apiKey) {
    authStatus('minting a client secret…');
    return mintSecret(apiKey);
  }
  if (stats.authRequired) {
    throw new PageError('unauthenticated',
      'this server needs a key: paste a client secret, or type an API key');
  }
  return null;
}

async function connect() {
  if (ws || connecting) return;
  ensureAudio(); // inside the click: the AudioContext may start
  connecting = true;
  ui.connect.disabled = true;
  setStatus('connecting', 'connecting…');
  try {
    await authProbe;
    openSocket(await socketCredential());
  } catch (err) {
    authFailed(err instanceof PageError ? err : new PageError('client', String(err.message || err)));
    ui.connect.disabled = false;
    setStatus('idle', 'not connected');
  } finally {
    connecting = false;
  }
}

function openSocket(credential) {
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  const query = lastSessionId ? `?session_id=${encodeURIComponent(lastSessionId)}` : '';
  // "realtime" is the one the server answers with; the secret's protocol is never echoed
  const protocols = credential ? ['realtime', SUBPROTOCOL_KEY_PREFIX + credential.value] : [];
  stats.socketAttempts += 1;
  stats.socketAuth = credential ? 'client_secret' : 'none';
  ws = new WebSocket(`${scheme}://${location.host}/v1/realtime${query}`, protocols);
  ws.binaryType = 'arraybuffer';
  ui.disconnect.disabled = false;
  let opened = false;
  ws.onopen = () => {
    opened = true;
    if (credential) {
      const how = credential.minted ? 'minted from the API key' : 'pasted';
      authStatus(`connected with a client secret (${how})`);
    }
  };
  ws.onmessage = (message) => {
    if (typeof message.data === 'string') onEvent(JSON.parse(message.data));
    else onReplyAudio(message.data, serverSession ? serverSession.output_sample_rate_hz : OUTPUT_RATE);
  };
  ws.onclose = (event) => {
    ws = null;
    stats.connected = false;
    if (player) player.flush();
    ui.connect.disabled = false;
    ui.disconnect.disabled = true;
    ui.apply.disabled = true;
    ui.talk.disabled = true;
    if (!opened) {
      setStatus('idle', 'not connected: refused');
      explainRefusal(credential);
      return;
    }
    const why = event.code === 1013 ? ' (server busy, try again later)' : event.reason ? ` (${event.reason})` : '';
    setStatus('idle', `disconnected ${event.code}${why}`);
  };
  ws.onerror = () => {
    if (opened) showError({ code: 'socket', message: 'WebSocket error' });
  };
}

// A socket refused at the handshake closes 1006 and the browser hides the HTTP answer
// (401 for a bad or expired secret, 403 for a foreign Origin, 429 after repeated failures):
// say what it most likely was, after checking that the controller answers at all.
async function explainRefusal(credential) {
  let reachable = false;
  try {
    reachable = (await fetch('/healthz', { cache: 'no-store' })).ok;
  } catch (_) { /* not reachable */ }
  if (!reachable) {
    showError({ code: 'unreachable', message: 'the controller does not answer' });
  } else if (credential && !credential.minted) {
    authFailed(new PageError('unauthenticated', 'the server refused the client secret: it is ' +
      'invalid or expired (secrets open a socket only within their lifetime): get a new one'));
  } else if (credential) {
    authFailed(new PageError('refused', 'the server refused the socket although the API key ' +
      'minted a client secret: this origin may not be allowed, or the key is rate limited'));
  } else if (stats.authRequired === false) {
    showError({ code: 'refused', message: 'the server refused the socket at the handshake' });
  } else {
    requireAuth();
    authFailed(new PageError('unauthenticated', 'the server refused the socket: it needs a key'));
  }
}

function disconnect() {
  if (ws) ws.close(1000, 'bye');
}

function send(event) {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(event));
}

function pttMode() {
  return serverSession ? serverSession.turn_detection === 'none' : ui.ptt.checked;
}

function sessionUpdate() {
  const session = {
    input_audio_format: { type: 'pcm16', sample_rate_hz: INPUT_RATE },
    output_audio_format: { type: 'pcm16', sample_rate_hz: OUTPUT_RATE, transport: TRANSPORT },
    speculative: ui.speculative.checked,
    turn_detection: { type: ui.ptt.checked ? 'none' : 'server_vad' },
  };
  if (ui.voice.value) session.voice = ui.voice.value;
  const prompt = ui.instructions.value;
  if (serverSession ? prompt !== serverSession.system_prompt : prompt.trim()) session.instructions = prompt;
  send({ type: 'session.update', session });
}

function onEvent(event) {
  stats.events[event.type] = (stats.events[event.type] || 0) + 1;
  if (!event.type.endsWith('.delta')) {
    stats.timeline.push([Math.round(performance.now()), event.type]);
    if (stats.timeline.length > 200) stats.timeline.shift();
  }
  switch (event.type) {
    case 'session.created':
      lastSessionId = event.session.id;
      stats.sessionId = event.session.id;
      stats.connected = true;
      ui.apply.disabled = false;
      serverSession = null;
      sessionUpdate();
      if (event.resumed) addEntry('system', `resumed session (${event.session.turns} turns)`);
      break;
    case 'session.updated':
      serverSession = event.session;
      showSession(event.session);
      break;
    case 'input_audio_buffer.speech_started':
      stats.speechStarted += 1;
      userSpeaking = true;
      interruptPlayback();
      if (!pendingUserEntry) pendingUserEntry = addEntry('user', '🎤 …');
      break;
    case 'input_audio_buffer.speech_stopped':
      userSpeaking = false;
      break;
    case 'input_audio_buffer.committed':
      userSpeaking = false;
      if (awaitingCommit) { awaitingCommit = false; send({ type: 'response.create' }); }
      break;
    case 'conversation.item.created': {
      const part = event.item.content[0] || {};
      const text = part.type === 'input_audio' ? `🎤 (${part.audio_tokens} audio tokens)` : part.text;
      const entry = pendingUserEntry || addEntry('user', '');
      pendingUserEntry = null;
      entry.text.textContent = text;
      entries.set(event.item.id, entry);
      break;
    }
    case 'conversation.item.input_audio_transcription.completed': {
      stats.transcripts.push(event.transcript);
      const entry = entries.get(event.item_id) || addEntry('user', '');
      entry.text.textContent = event.transcript || '(no words)';
      break;
    }
    case 'response.created':
      currentResponse = event.response.id;
      entries.set(currentResponse, addEntry('assistant', ''));
      break;
    case 'response.text.delta': {
      const entry = entries.get(event.response_id);
      if (entry) entry.text.textContent += event.delta;
      break;
    }
    case 'response.audio.delta':
      onReplyAudio(base64ToBuffer(event.delta), event.sample_rate_hz || OUTPUT_RATE, event.response_id);
      break;
    case 'response.done':
      onResponseDone(event.response);
      break;
    case 'error':
      if (event.error.code === 'empty_audio' || event.error.code === 'session_expired') {
        awaitingCommit = false;
        if (event.error.code === 'session_expired') lastSessionId = null;
      }
      showError(event.error);
      break;
    default:
      break;
  }
  refreshStatus();
}

function onResponseDone(response) {
  stats.responsesDone += 1;
  stats.lastResponse = response;
  stats.lastTimings = response.timings_ms;
  if (currentResponse === response.id) currentResponse = null;
  const entry = entries.get(response.id);
  if (entry && response.status !== 'completed') entry.meta.textContent = ` (${response.status})`;
  if (entry && response.speculative) entry.meta.textContent += ' ⚡';
  const t = response.timings_ms || {};
  if (t.first_audio !== undefined) ui.latency.textContent = `${Math.round(t.first_audio)} ms`;
  ui.timings.textContent = Object.entries(t)
    .map(([stage, ms]) => `${stage} ${Math.round(ms)} ms`)
    .join(' · ') + (response.speculative ? ' · speculative' : '');
}

function interruptPlayback() {
  if (currentResponse) muted.add(currentResponse);
  if (player) player.flush();
}

// -- push-to-talk and text turns ----------------------------------------------------------

async function startTalking() {
  if (talking || !ws) return;
  if (!mic) await startMic();
  interruptPlayback();
  if (currentResponse) send({ type: 'response.cancel' });
  // no input_audio_buffer.clear: frames are only sent while the button is held, so the
  // server's push-to-talk buffer is empty here (and clear would stop its capture)
  talking = true;
  ui.talk.classList.add('active');
  pendingUserEntry = pendingUserEntry || addEntry('user', '🎤 …');
  refreshStatus();
}

function stopTalking() {
  if (!talking) return;
  talking = false;
  ui.talk.classList.remove('active');
  if (pendingLength && ws && ws.readyState === WebSocket.OPEN) {
    ws.send(pending.slice(0, pendingLength).buffer); // the last few ms of the turn
    stats.framesSent += 1;
    pendingLength = 0;
  }
  awaitingCommit = true;
  send({ type: 'input_audio_buffer.commit' });
  refreshStatus();
}

function sendText(text) {
  if (!text.trim()) return;
  interruptPlayback();
  if (currentResponse) send({ type: 'response.cancel' });
  send({ type: 'conversation.item.create', item: { type: 'message', role: 'user', content: [{ type: 'input_text', text }] } });
  send({ type: 'response.create' });
}

// -- the page -------------------------------------------------------------------------------

function setStatus(state, text) {
  ui.status.dataset.state = state;
  ui.status.textContent = text;
}

function refreshStatus() {
  if (!ws || ws.readyState !== WebSocket.OPEN || !stats.connected) return;
  const suspended = ctx && ctx.state === 'suspended' ? ' (click the page to enable audio)' : '';
  if (talking || userSpeaking) setStatus('user', 'you are speaking');
  else if (player && player.playing) setStatus('assistant', 'assistant speaking');
  else if (currentResponse || awaitingCommit) setStatus('thinking', 'thinking…');
  else if (mic) setStatus('listening', (pttMode() ? 'hold the button to talk' : 'listening') + suspended);
  else setStatus('connected', 'connected: start the mic' + suspended);
}

function addEntry(role, text) {
  const li = document.createElement('li');
  li.className = role;
  const textEl = document.createElement('span');
  textEl.className = 'text';
  textEl.textContent = text;
  const meta = document.createElement('span');
  meta.className = 'meta';
  li.append(textEl, meta);
  ui.log.append(li);
  li.scrollIntoView({ block: 'end' });
  return { li, text: textEl, meta };
}

function showError(error) {
  stats.errors.push(error);
  const li = document.createElement('li');
  li.textContent = `${error.code}: ${error.message}`;
  ui.errors.prepend(li);
}

function showSession(session) {
  if (session.voice && ![...ui.voice.options].some((o) => o.value === session.voice)) {
    ui.voice.append(new Option(session.voice, session.voice));
  }
  ui.voice.value = session.voice || '';
  if (document.activeElement !== ui.instructions) ui.instructions.value = session.system_prompt || '';
  ui.speculative.checked = !!session.speculative;
  ui.ptt.checked = session.turn_detection === 'none';
  ui.talk.hidden = !ui.ptt.checked;
  ui.talk.disabled = !ui.ptt.checked;
}

// Lists the voices; without a key this is also how the page learns whether the server needs
// one (401). A client secret cannot list them (it opens realtime sockets only).
async function loadVoices(apiKey) {
  let reply;
  try {
    const headers = apiKey ? { Authorization: `Bearer ${apiKey}` } : {};
    reply = await fetch('/v1/voices', { headers, cache: 'no-store' });
  } catch (err) {
    console.warn('could not list voices', err);
    return;
  }
  if (!reply.ok) {
    const body = await reply.json().catch(() => ({}));
    // only the key check answers 401, or 429 after failed attempts from this address
    if (!apiKey && (reply.status === 401 || reply.status === 429)) requireAuth();
    if (reply.status === 429) showError(body.error || { code: 'rate_limited', message: 'HTTP 429' });
    else if (reply.status !== 401) console.warn('could not list voices: HTTP', reply.status);
    return;
  }
  if (!apiKey && stats.authRequired === null) stats.authRequired = false;
  const { voices } = await reply.json();
  for (const voice of voices) {
    if (![...ui.voice.options].some((o) => o.value === voice.name)) {
      ui.voice.append(new Option(voice.name, voice.name));
    }
  }
  stats.voicesListed = true;
  ui.voiceNote.hidden = true;
}

function micError(err) {
  showError({ code: 'microphone', message: `${err.name || 'error'}: ${err.message || err}` });
}

ui.connect.onclick = connect;
ui.disconnect.onclick = disconnect;
ui.mic.onclick = () => (mic ? stopMic() : startMic().catch(micError));
ui.apply.onclick = sessionUpdate;
ui.talk.onpointerdown = () => startTalking().catch(micError);
ui.talk.onpointerup = stopTalking;
ui.talk.onpointerleave = stopTalking;
ui.textForm.onsubmit = (event) => {
  event.preventDefault();
  sendText(ui.text.value);
  ui.text.value = '';
};
document.addEventListener('keydown', (event) => {
  if (event.code === 'Space' && event.target === document.body && pttMode()) {
    event.preventDefault();
    if (!event.repeat) startTalking().catch(micError);
  }
});
document.addEventListener('keyup', (event) => {
  if (event.code === 'Space' && event.target === document.body) stopTalking();
});
document.addEventListener('click', () => ctx && ctx.state === 'suspended' && ctx.resume());

if (params.get('ptt') === '1') ui.ptt.checked = true;
authProbe = loadVoices();
if (params.get('autostart') === '1') {
  connect();
  startMic().catch(micError);
}

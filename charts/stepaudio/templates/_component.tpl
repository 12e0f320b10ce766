{{/*
One gRPC service (VAD, tokenizer, LLM, TTS, end-to-end LLM): ConfigMap with its settings,
Service, Deployment and PodDisruptionBudget. Called with a dict:
  root         the chart context ($)
  component    short name: vad, tokenizer, llm, tts, e2e-llm
  values       the component's values (.Values.vad ...)
  env          settings for the ConfigMap (name → value; commonEnv and values.env merged in here)
  containerEnv EnvVar list set on the container itself (valueFrom, $(VAR) references)
  args         container args (the image's entrypoint is `stepaudio`)
  command      optional container command (replaces the entrypoint)
  gpus         nvidia.com/gpu per pod
  gpuImage     use the GPU image even without GPUs (engine vllm)
  needsModels  mount the model root
  volumes      extra volumes of this component / volumeMounts: their mounts
*/}}
{{- define "stepaudio.grpcComponent" -}}
{{- $root := .root }}
{{- $v := .values }}
{{- $ctx := dict "root" $root "component" .component }}
{{- $name := include "stepaudio.componentName" $ctx }}
{{- $gpus := int .gpus }}
{{- $img := dict "root" $root "gpu" (or (gt $gpus 0) .gpuImage) }}
{{- $env := merge (deepCopy (default dict $v.env)) .env (deepCopy (default dict $root.Values.commonEnv)) }}
{{- $envText := include "stepaudio.envData" $env | trim }}
{{- $grace := include "stepaudio.terminationGrace" (dict "name" .component "values" $v) }}
{{- $resources := deepCopy (default dict $v.resources) }}
{{- if gt $gpus 0 }}
{{- $limits := deepCopy (default dict $resources.limits) }}
{{- $_ := set $limits "nvidia.com/gpu" $gpus }}
{{- $_ := set $resources "limits" $limits }}
{{- end }}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ $name }}-env
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "stepaudio.labels" $ctx | nindent 4 }}
data:
  {{- $envText | nindent 2 }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ $name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "stepaudio.labels" $ctx | nindent 4 }}
  {{- with $v.service.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  type: {{ $v.service.type }}
  selector:
    {{- include "stepaudio.selectorLabels" $ctx | nindent 4 }}
  ports:
    - name: grpc
      port: {{ int $v.port }}
      targetPort: grpc
      protocol: TCP
      appProtocol: grpc
    {{- if $root.Values.metrics.enabled }}
    - name: metrics
      port: {{ int $root.Values.metrics.port }}
      targetPort: metrics
      protocol: TCP
    {{- end }}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $name }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "stepaudio.labels" $ctx | nindent 4 }}
spec:
  replicas: {{ int $v.replicaCount }}
  revisionHistoryLimit: 5
  {{- with $v.strategy }}
  strategy:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "stepaudio.selectorLabels" $ctx | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "stepaudio.labels" $ctx | nindent 8 }}
        {{- with $v.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        checksum/env: {{ $envText | sha256sum }}
        {{- with $v.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "stepaudio.serviceAccountName" $root }}
      automountServiceAccountToken: false
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
      terminationGracePeriodSeconds: {{ $grace }}
      {{- with $v.priorityClassName }}
      priorityClassName: {{ . }}
      {{- end }}
      {{- if and .needsModels (eq $root.Values.models.source "tiny") }}
      initContainers:
        {{- include "stepaudio.tinyPackInit" $img | nindent 8 }}
      {{- end }}
      containers:
        - name: {{ .component }}
          image: {{ include "stepaudio.image" $img }}
          imagePullPolicy: {{ include "stepaudio.imagePullPolicy" $img }}
          {{- with .command }}
          command:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          args:
            {{- toYaml .args | nindent 12 }}
          ports:
            - name: grpc
              containerPort: {{ int $v.port }}
              protocol: TCP
            {{- if $root.Values.metrics.enabled }}
            - name: metrics
              containerPort: {{ int $root.Values.metrics.port }}
              protocol: TCP
            {{- end }}
          envFrom:
            - configMapRef:
                name: {{ $name }}-env
          {{- $containerEnv := concat (default list .containerEnv) (default list $v.extraEnv) }}
          {{- with $containerEnv }}
          env:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          # grpc.health.v1 on the serving port: NOT_SERVING while the model loads and once
          # draining starts, SERVING in between
          startupProbe:
            grpc:
              port: {{ int $v.port }}
            {{- toYaml $v.probes.startup | nindent 12 }}
          readinessProbe:
            grpc:
              port: {{ int $v.port }}
            {{- toYaml $v.probes.readiness | nindent 12 }}
          livenessProbe:
            grpc:
              port: {{ int $v.port }}
            {{- toYaml $v.probes.liveness | nindent 12 }}
          {{- if gt (int $v.drain.preStopSleepSeconds) 0 }}
          lifecycle:
            preStop:
              # keep serving while the endpoint is removed; SIGTERM then drains
              exec:
                command: ["sleep", "{{ int $v.drain.preStopSleepSeconds }}"]
          {{- end }}
          {{- with $resources }}
          resources:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          securityContext:
            {{- toYaml $root.Values.securityContext | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            - name: home
              mountPath: {{ $root.Values.homeDir }}
            {{- if .needsModels }}
            {{- include "stepaudio.modelMount" $root | trim | nindent 12 }}
            {{- end }}
            {{- if $v.shmSizeLimit }}
            - name: shm
              mountPath: /dev/shm
            {{- end }}
            {{- with .volumeMounts }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
            {{- with $v.extraVolumeMounts }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
      volumes:
        - name: tmp
          emptyDir: {}
        - name: home
          emptyDir: {}
        {{- if .needsModels }}
        {{- include "stepaudio.modelVolume" $root | trim | nindent 8 }}
        {{- end }}
        {{- if $v.shmSizeLimit }}
        - name: shm
          emptyDir:
            medium: Memory
            sizeLimit: {{ $v.shmSizeLimit }}
        {{- end }}
        {{- with .volumes }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
        {{- with $v.extraVolumes }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with $v.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.topologySpreadConstraints }}
      topologySpreadConstraints:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- include "stepaudio.pdb" (dict "root" $root "component" .component "values" $v) }}
{{- end }}

{{/* PodDisruptionBudget of a component (leading "---"): (dict "root" "component" "values") */}}
{{- define "stepaudio.pdb" -}}
{{- $v := .values }}
{{- if $v.pdb.enabled }}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "stepaudio.componentName" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "stepaudio.labels" . | nindent 4 }}
spec:
  {{- if not (kindIs "invalid" $v.pdb.minAvailable) }}
  minAvailable: {{ $v.pdb.minAvailable }}
  {{- else }}
  maxUnavailable: {{ default 1 $v.pdb.maxUnavailable }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "stepaudio.selectorLabels" . | nindent 6 }}
{{- end }}
{{- end }}

{{/* ConfigMap data lines from an env dict, sorted, every value a quoted string */}}
{{- define "stepaudio.envData" -}}
{{- $env := . }}
{{- range $key := keys $env | sortAlpha }}
{{- $val := get $env $key }}
{{- if not (kindIs "invalid" $val) }}
{{ $key }}: {{ include "stepaudio.envValue" $val | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* Settings every gRPC service has: (dict "root" $ "prefix" "VAD_" "values" .Values.vad) */}}
{{- define "stepaudio.env.common" -}}
{{- $p := .prefix }}
{{- $v := .values }}
{{ $p }}HOST: 0.0.0.0
{{ $p }}PORT: {{ int $v.port }}
{{ $p }}LOG_LEVEL: {{ $v.logLevel }}
{{ $p }}DRAIN_DELAY_S: {{ int $v.drain.drainDelaySeconds }}
{{ $p }}SHUTDOWN_GRACE_S: {{ int $v.drain.shutdownGraceSeconds }}
{{- if .root.Values.metrics.enabled }}
{{ $p }}METRICS_PORT: {{ int .root.Values.metrics.port }}
{{- end }}
{{- end }}

{{/* <PREFIX>VLLM__<NAME> for every non-null key of a vllm values map */}}
{{- define "stepaudio.env.vllm" -}}
{{- $p := .prefix }}
{{- range $key, $val := .vllm }}
{{- if not (kindIs "invalid" $val) }}
{{ $p }}VLLM__{{ include "stepaudio.settingName" $key }}: {{ include "stepaudio.envValue" $val | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* ---------- names and labels ---------- */}}

{{- define "stepaudio.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "stepaudio.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "stepaudio.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Resource name of a component: <fullname>-<component> (component names are short). */}}
{{- define "stepaudio.componentName" -}}
{{- printf "%s-%s" (include "stepaudio.fullname" .root | trunc 50 | trimSuffix "-") .component }}
{{- end }}

{{- define "stepaudio.selectorLabels" -}}
app.kubernetes.io/name: {{ include "stepaudio.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "stepaudio.labels" -}}
helm.sh/chart: {{ include "stepaudio.chart" .root }}
{{ include "stepaudio.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: stepaudio
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "stepaudio.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "stepaudio.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* ---------- images ---------- */}}

{{/* The CPU or GPU image: (dict "root" $ "gpu" bool) */}}
{{- define "stepaudio.image" -}}
{{- $img := ternary .root.Values.gpuImage .root.Values.image .gpu }}
{{- printf "%s:%s" $img.repository (default .root.Chart.AppVersion $img.tag) }}
{{- end }}

{{- define "stepaudio.imagePullPolicy" -}}
{{- $img := ternary .root.Values.gpuImage .root.Values.image .gpu }}
{{- $img.pullPolicy }}
{{- end }}

{{/* ---------- env values ---------- */}}

{{/*
One environment value as a string. Helm reads YAML numbers as float64, which would print
8388608 as 8.388608e+06: whole numbers are printed as integers.
*/}}
{{- define "stepaudio.envValue" -}}
{{- $v := . }}
{{- if kindIs "float64" $v }}
{{- if eq $v (float64 (int64 $v)) }}{{ int64 $v }}{{ else }}{{ $v }}{{ end }}
{{- else if kindIs "bool" $v }}
{{- ternary "true" "false" $v }}
{{- else }}
{{- $v }}
{{- end }}
{{- end }}

{{/* camelCase values key → UPPER_SNAKE setting name (tensorParallelSize → TENSOR_PARALLEL_SIZE) */}}
{{- define "stepaudio.settingName" -}}
{{- . | snakecase | upper }}
{{- end }}

{{/* ---------- addresses ---------- */}}

{{/* host:port of a component's Service: (dict "root" $ "component" "vad" "port" 50051) */}}
{{- define "stepaudio.address" -}}
{{- printf "%s.%s.svc.%s:%v" (include "stepaudio.componentName" .) .root.Release.Namespace .root.Values.clusterDomain (int .port) }}
{{- end }}

{{- define "stepaudio.redis.host" -}}
{{- printf "%s.%s.svc.%s" (include "stepaudio.componentName" (dict "root" . "component" "redis")) .Release.Namespace .Values.clusterDomain }}
{{- end }}

{{- define "stepaudio.redis.secretName" -}}
{{- if .Values.redis.auth.existingSecret }}
{{- .Values.redis.auth.existingSecret }}
{{- else }}
{{- include "stepaudio.componentName" (dict "root" . "component" "redis") }}
{{- end }}
{{- end }}

{{/* ---------- GPUs ---------- */}}

{{/* GPUs per pod of an LLM-like component: (dict "root" $ "values" .Values.llm "ray" bool) */}}
{{- define "stepaudio.llmGpus" -}}
{{- $v := .values }}
{{- if not (kindIs "invalid" $v.gpus) }}
{{- int $v.gpus }}
{{- else if and (eq $v.engine "vllm") (not .ray) }}
{{- mul (int (default 1 $v.vllm.tensorParallelSize)) (int (default 1 $v.vllm.pipelineParallelSize)) }}
{{- else if .ray }}
{{- $total := mul (int (default 1 $v.vllm.tensorParallelSize)) (int (default 1 $v.vllm.pipelineParallelSize)) }}
{{- sub $total (mul (int .root.Values.llm.ray.workers.replicas) (int .root.Values.llm.ray.workers.gpusPerWorker)) }}
{{- else }}0
{{- end }}
{{- end }}

{{/* ---------- termination ---------- */}}

{{/*
terminationGracePeriodSeconds of a component: (dict "name" "vad" "values" .Values.vad).
null → preStop + drain delay + shutdown grace + 15 s; a set value must exceed that sum.
*/}}
{{- define "stepaudio.terminationGrace" -}}
{{- $d := .values.drain }}
{{- $need := add (int $d.preStopSleepSeconds) (int (default 0 $d.drainDelaySeconds)) (int $d.shutdownGraceSeconds) }}
{{- if kindIs "invalid" .values.terminationGracePeriodSeconds }}
{{- add $need 15 }}
{{- else if le (int .values.terminationGracePeriodSeconds) $need }}
{{- fail (printf "%s.terminationGracePeriodSeconds (%v) must exceed preStop + drain delay + shutdown grace (%d s)" .name .values.terminationGracePeriodSeconds $need) }}
{{- else }}
{{- int .values.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/* ---------- pod pieces shared by every stepaudio pod ---------- */}}

{{/* The model volume (not for source tiny, whose emptyDir is added by the caller). */}}
{{- define "stepaudio.modelVolume" -}}
{{- $m := .Values.models }}
- name: models
{{- if eq $m.source "tiny" }}
  emptyDir:
    sizeLimit: 256Mi
{{- else if eq $m.source "pvc" }}
{{- if not $m.pvc.claimName }}{{ fail "models.source=pvc needs models.pvc.claimName" }}{{ end }}
  persistentVolumeClaim:
    claimName: {{ $m.pvc.claimName }}
    readOnly: true
{{- else if eq $m.source "hostPath" }}
{{- if not $m.hostPath.path }}{{ fail "models.source=hostPath needs models.hostPath.path" }}{{ end }}
  hostPath:
    path: {{ $m.hostPath.path }}
    type: {{ $m.hostPath.type }}
{{- else if eq $m.source "volume" }}
{{- if not $m.volume }}{{ fail "models.source=volume needs models.volume" }}{{ end }}
{{- toYaml $m.volume | nindent 2 }}
{{- else }}
{{- fail (printf "models.source must be tiny, pvc, hostPath or volume (got %q)" $m.source) }}
{{- end }}
{{- end }}

{{- define "stepaudio.modelMount" -}}
- name: models
  mountPath: {{ .Values.models.mountPath }}
  readOnly: true
{{- if and .Values.models.subPath (ne .Values.models.source "tiny") }}
  subPath: {{ .Values.models.subPath }}
{{- end }}
{{- end }}

{{/* initContainer writing the tiny pack (models.source tiny): (dict "root" $ "gpu" bool) */}}
{{- define "stepaudio.tinyPackInit" -}}
- name: tiny-pack
  image: {{ include "stepaudio.image" . }}
  imagePullPolicy: {{ include "stepaudio.imagePullPolicy" . }}
  args:
    - models
    - tiny
    - --out
    - {{ .root.Values.models.mountPath }}
    {{- if .root.Values.e2eLlm.enabled }}
    - --variant
    - aqaa
    {{- end }}
  securityContext:
    {{- toYaml .root.Values.securityContext | nindent 4 }}
  resources:
    requests:
      cpu: 500m
      memory: 512Mi
    limits:
      memory: 1Gi
  volumeMounts:
    - name: models
      mountPath: {{ .root.Values.models.mountPath }}
    - name: tmp
      mountPath: /tmp
    - name: home
      mountPath: {{ .root.Values.homeDir }}
{{- end }}

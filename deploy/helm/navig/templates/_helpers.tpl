{{/* Names and labels shared by every template. */}}

{{- define "navig.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "navig.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "navig.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "navig.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "navig.orchestrator.selector" -}}
app.kubernetes.io/name: {{ include "navig.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: orchestrator
{{- end -}}

{{/* Pool objects: call with (dict "root" $ "pool" $name). */}}
{{- define "navig.pool.fullname" -}}
{{- printf "%s-triton-%s" (include "navig.fullname" .root) .pool | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "navig.pool.selector" -}}
app.kubernetes.io/name: {{ include "navig.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: triton
navig-serve.io/pool: {{ .pool }}
{{- end -}}

{{/* The gRPC target of a pool: its headless Service's DNS name, resolved to every ready replica. */}}
{{- define "navig.pool.target" -}}
{{- printf "dns:///%s.%s.svc.%s:%d" (include "navig.pool.fullname" .) .root.Release.Namespace .root.Values.clusterDomain (int .root.Values.triton.grpcPort) -}}
{{- end -}}

{{/* NAVIG_POOLS: every pool but the default one, as the JSON the settings read. */}}
{{- define "navig.pools.json" -}}
{{- $root := . -}}
{{- $pools := dict -}}
{{- range $name, $pool := .Values.triton.pools -}}
{{- if ne $name $root.Values.triton.defaultPool -}}
{{- $_ := set $pools $name (dict "target" (include "navig.pool.target" (dict "root" $root "pool" $name)) "models" $pool.models) -}}
{{- end -}}
{{- end -}}
{{- toJson $pools -}}
{{- end -}}

{{/* Chart name, truncated to the 63 characters Kubernetes allows in a name. */}}
{{- define "crm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Full name of the release's objects. Component objects append "-<component>", so the
base is kept short enough for the longest component name.
*/}}
{{- define "crm.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "crm.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels that say which chart and version made an object (never in selectors). */}}
{{- define "crm.chartLabels" -}}
helm.sh/chart: {{ include "crm.chart" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: crm
{{- end -}}

{{/* Labels of the release's shared objects (ConfigMap, Secret). */}}
{{- define "crm.labels" -}}
{{ include "crm.chartLabels" . }}
app.kubernetes.io/name: {{ include "crm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Name of one component's objects. Call with (dict "root" $ "name" $name). */}}
{{- define "crm.componentFullname" -}}
{{- printf "%s-%s" (include "crm.fullname" .root) .name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels of one component. Call with (dict "root" $ "name" $name). */}}
{{- define "crm.componentSelectorLabels" -}}
app.kubernetes.io/name: {{ include "crm.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{/* Pod labels of one component. Call with (dict "root" $ "name" $name "c" $c). */}}
{{- define "crm.componentPodLabels" -}}
{{ include "crm.componentSelectorLabels" . }}
crm/service: {{ .c.service }}
crm/role: {{ .c.role }}
{{- end -}}

{{/* All labels of one component's objects. Call with (dict "root" $ "name" $name "c" $c). */}}
{{- define "crm.componentLabels" -}}
{{ include "crm.chartLabels" .root }}
{{ include "crm.componentPodLabels" . }}
{{- end -}}

{{- define "crm.serviceAccountName" -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}

{{- define "crm.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{- define "crm.configMapName" -}}
{{- printf "%s-config" (include "crm.fullname" .) -}}
{{- end -}}

{{/* True (non-empty) when values.secrets.values holds at least one non-empty value. */}}
{{- define "crm.chartSecretValues" -}}
{{- range $k, $v := .Values.secrets.values -}}
{{- if $v -}}x{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Name of the Secret the pods read: existingSecret if given, else the one the chart
creates from values.secrets.values. Neither is an error: production has no default
secrets.
*/}}
{{- define "crm.secretName" -}}
{{- if .Values.secrets.existingSecret -}}
{{- .Values.secrets.existingSecret -}}
{{- else if include "crm.chartSecretValues" . -}}
{{- printf "%s-secrets" (include "crm.fullname" .) -}}
{{- else -}}
{{- fail "crm: no secrets configured. Set secrets.existingSecret to a Secret holding CRM_POSTGRES_PASSWORD, CRM_CLICKHOUSE_URL, CRM_API_KEYS, CRM_BLIND_INDEX_KEY, CRM_MASTER_KEY, CRM_MESSAGING_API_KEY, CRM_SURVEY_TOKEN_KEY, CRM_IDENTITY_API_KEY, CRM_ANALYTICS_API_KEY, CRM_WEBHOOK_SECRET, CRM_CONTACT_SIGNING_KEY and CRM_CONTACT_VERIFY_KEY (see values.yaml), or provide them in secrets.values." -}}
{{- end -}}
{{- end -}}

{{/* Roles that serve HTTP and get a Service and probes. */}}
{{- define "crm.isHttpRole" -}}
{{- if eq .role "api" -}}true{{- end -}}
{{- end -}}

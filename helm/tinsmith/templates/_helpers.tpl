{{/*
Names. The RayCluster, Service, ConfigMap and PVC all carry the full name; KubeRay names the pods
<fullname>-head-xxxxx and <fullname>-<group>-worker-xxxxx, so the name is kept short.
*/}}
{{- define "tinsmith.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tinsmith.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "tinsmith.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object the chart creates. */}}
{{- define "tinsmith.labels" -}}
helm.sh/chart: {{ include "tinsmith.chart" . }}
app.kubernetes.io/name: {{ include "tinsmith.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Selects the Ray head pod. KubeRay sets ray.io/cluster and ray.io/node-type on every pod it creates
and does not let the pod template override them.
*/}}
{{- define "tinsmith.headSelectorLabels" -}}
ray.io/cluster: {{ include "tinsmith.fullname" . }}
ray.io/node-type: head
{{- end }}

{{- define "tinsmith.configMapName" -}}
{{- printf "%s-config" (include "tinsmith.fullname" .) }}
{{- end }}

{{- define "tinsmith.dataClaimName" -}}
{{- if .Values.dataDir.persistence.existingClaim }}
{{- .Values.dataDir.persistence.existingClaim }}
{{- else }}
{{- printf "%s-data" (include "tinsmith.fullname" .) }}
{{- end }}
{{- end }}

{{/* image: "repository:tag" for a group; call with (dict "root" $ "image" $group.image). */}}
{{- define "tinsmith.image" -}}
{{- $image := merge (deepCopy (.image | default dict)) .root.Values.image }}
{{- printf "%s:%s" $image.repository (toString ($image.tag | default .root.Chart.AppVersion)) }}
{{- end }}

{{- define "tinsmith.imagePullPolicy" -}}
{{- $image := merge (deepCopy (.image | default dict)) .root.Values.image }}
{{- $image.pullPolicy | default "IfNotPresent" }}
{{- end }}

{{/* The GCS port of the Ray head (rayStartParams.port, 6379 by default). */}}
{{- define "tinsmith.gcsPort" -}}
{{- .Values.head.rayStartParams.port | default "6379" | toString }}
{{- end }}

{{/*
Container resources of a group: its `resources`, plus `gpus` as both request and limit of
`gpuResourceName` (KubeRay advertises the limit to Ray as num-gpus).
Call with (dict "root" $ "group" $group).
*/}}
{{- define "tinsmith.resources" -}}
{{- $res := deepCopy (.group.resources | default dict) }}
{{- $gpus := int (.group.gpus | default 0) }}
{{- if gt $gpus 0 }}
{{- $requests := $res.requests | default dict }}
{{- $limits := $res.limits | default dict }}
{{- $_ := set $requests .root.Values.gpuResourceName $gpus }}
{{- $_ := set $limits .root.Values.gpuResourceName $gpus }}
{{- $_ := set $res "requests" $requests }}
{{- $_ := set $res "limits" $limits }}
{{- end }}
{{- toYaml $res }}
{{- end }}

{{/*
rayStartParams of a group: its `rayStartParams` (values quoted: KubeRay wants strings) and, for worker
groups, `rayResources` as the JSON map `ray start --resources` takes, single-quoted for the shell
that runs the generated `ray start` command. Call with (dict "group" $group).
*/}}
{{- define "tinsmith.rayStartParams" -}}
{{- $params := dict }}
{{- range $key, $value := .group.rayStartParams | default dict }}
{{- $_ := set $params $key (toString $value) }}
{{- end }}
{{- if .group.rayResources }}
{{- $_ := set $params "resources" (printf "'%s'" (toJson .group.rayResources)) }}
{{- end }}
{{- toYaml $params }}
{{- end }}

{{/* Environment shared by every Ray container: data dir, model cache, S3 credentials, extra env. */}}
{{- define "tinsmith.commonEnv" -}}
- name: TINSMITH_DATA_DIR
  value: {{ .Values.dataDir.path | quote }}
{{- if .Values.modelCacheDir }}
- name: TINSMITH_CACHE_DIR
  value: {{ .Values.modelCacheDir | quote }}
{{- end }}
{{- with .Values.s3Credentials.existingSecret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.s3Credentials.accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $.Values.s3Credentials.secretAccessKeyKey }}
{{- end }}
{{- with .Values.env }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The data-dir volume of the head pod (and of workers when dataDir.shareWithWorkers). */}}
{{- define "tinsmith.dataVolumeSource" -}}
{{- if .Values.dataDir.persistence.enabled }}
persistentVolumeClaim:
  claimName: {{ include "tinsmith.dataClaimName" . }}
{{- else if .Values.dataDir.hostPath }}
hostPath:
  path: {{ .Values.dataDir.hostPath }}
  type: DirectoryOrCreate
{{- else }}
emptyDir: {}
{{- end }}
{{- end }}

{{/* Pod-level settings shared by every Ray pod of a group. Call with (dict "root" $ "group" $group). */}}
{{- define "tinsmith.podScheduling" -}}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .root.Values.serviceAccountName }}
serviceAccountName: {{ . }}
{{- end }}
{{- with .root.Values.podSecurityContext }}
securityContext:
  {{- toYaml . | nindent 2 }}
{{- end }}
terminationGracePeriodSeconds: {{ .root.Values.terminationGracePeriodSeconds }}
{{- with .group.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .group.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .group.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
A worker group of the RayCluster. Call with (dict "root" $ "name" "trainer" "group" .Values.trainer).
The container runs the `ray start ... --block` command KubeRay generated, with the group's custom resources.
*/}}
{{- define "tinsmith.workerGroup" -}}
{{- $root := .root -}}
{{- $g := .group -}}
- groupName: {{ .name }}
  replicas: {{ $g.replicas }}
  minReplicas: {{ hasKey $g "minReplicas" | ternary $g.minReplicas $g.replicas }}
  maxReplicas: {{ hasKey $g "maxReplicas" | ternary $g.maxReplicas $g.replicas }}
  rayStartParams:
    {{- include "tinsmith.rayStartParams" (dict "group" $g) | nindent 4 }}
  template:
    metadata:
      labels:
        app.kubernetes.io/instance: {{ $root.Release.Name }}
        app.kubernetes.io/component: {{ .name }}
        {{- with $g.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with $g.podAnnotations }}
      annotations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    spec:
      {{- include "tinsmith.podScheduling" (dict "root" $root "group" $g) | trim | nindent 6 }}
      containers:
        - name: ray-worker
          image: {{ include "tinsmith.image" (dict "root" $root "image" $g.image) }}
          imagePullPolicy: {{ include "tinsmith.imagePullPolicy" (dict "root" $root "image" $g.image) }}
          command: ["/bin/bash", "-lc", "--"]
          args:
            - ulimit -n 65536; eval "exec $KUBERAY_GEN_RAY_START_CMD"
          lifecycle:
            preStop:
              exec:
                command: ["/bin/sh", "-c", "ray stop"]
          env:
            {{- include "tinsmith.commonEnv" $root | trim | nindent 12 }}
            {{- with $g.env }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          resources:
            {{- include "tinsmith.resources" (dict "root" $root "group" $g) | nindent 12 }}
          volumeMounts:
            - name: tinsmith-data
              mountPath: {{ $root.Values.dataDir.path }}
            {{- with $root.Values.extraVolumeMounts }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
      volumes:
        - name: tinsmith-data
          {{- if $root.Values.dataDir.shareWithWorkers }}
          {{- include "tinsmith.dataVolumeSource" $root | trim | nindent 10 }}
          {{- else }}
          emptyDir: {}
          {{- end }}
        {{- with $root.Values.extraVolumes }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
{{- end }}

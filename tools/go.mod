module signal-sidecar/tools

go 1.24

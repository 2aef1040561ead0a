# Release image for the tslink managed plugin's rootfs. Nothing is pulled at
# build time beyond the Go toolchain stage: the runtime is FROM scratch with
# the static binary and a CA bundle. `make plugin` assembles the same rootfs
# without Docker builds (no registry access needed).
FROM golang:1.26 AS build
WORKDIR /src
COPY . .
RUN bash scripts/patch-modules.sh
RUN CGO_ENABLED=0 go build -trimpath -o /out/tslink ./cmd/tslink

FROM scratch
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/tslink /tslink
ENTRYPOINT ["/tslink"]

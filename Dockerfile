# The action's image: a static ghcr-pull on scratch, with CA certificates and
# nothing else (no shell, no docker CLI: the Engine API is spoken directly).
#
# Multi-arch: the release workflow builds linux/amd64 and linux/arm64 with
# buildx. The build stage runs on the target platform (emulated for arm64)
# rather than cross-compiling from $BUILDPLATFORM, because the classic
# builder (what `uses: ./` and act use) leaves BUILDPLATFORM empty and
# refuses `FROM --platform=` with no value. See docs/packaging.md.
#
# GO_IMAGE names the builder. The test suite builds this file offline: it
# prepares a local image under this tag from the machine's own Go toolchain
# and builds a context that carries vendor/ (internal/e2e/actionimage.go).
ARG GO_IMAGE=golang:1.26.8-bookworm

FROM ${GO_IMAGE} AS build
WORKDIR /src
COPY . .
# go build fetches the modules, unless the context carries vendor/ (the
# offline test build), which it then uses.
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/ghcr-pull . \
 && mkdir -p /out/tmp && chmod 1777 /out/tmp

FROM scratch
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/tmp /tmp
COPY --from=build /out/ghcr-pull /ghcr-pull
ENTRYPOINT ["/ghcr-pull"]

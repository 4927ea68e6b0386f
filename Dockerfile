# The image of each Tributary binary (tributary-operator, tributary-gateway,
# tributary-worker, tributary-api, tributary-simulator): the same stages for all five, the binary chosen
# by the BINARY build argument.
#
# With a registry:
#   docker build --build-arg BINARY=tributary-gateway --target runtime -t tributary/gateway:0.1.0 .
# Without one (tests/images/build-project-images.sh): the runtime stage alone, around a
# binary built on the host:  --build-arg BINARY_FROM=prebuilt, context = folder with it.
ARG BINARY
ARG BUILDER_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim
ARG BINARY_FROM=build

FROM ${BUILDER_IMAGE} AS build
ARG BINARY
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p "${BINARY}" \
 && install -D -m 0755 "target/release/${BINARY}" "/out/${BINARY}"

FROM scratch AS prebuilt
ARG BINARY
COPY ${BINARY} /out/${BINARY}

FROM ${BINARY_FROM} AS binary

FROM ${RUNTIME_IMAGE} AS base
ARG BINARY
COPY --from=binary /out/${BINARY} /usr/local/bin/${BINARY}
# A numeric non-root user, so Pod Security "restricted" can verify runAsNonRoot.
USER 65532:65532

# An exec-form ENTRYPOINT expands no build argument: one two-line stage per binary, and
# `runtime` is the one BINARY names.
FROM base AS tributary-operator
ENTRYPOINT ["/usr/local/bin/tributary-operator"]

FROM base AS tributary-gateway
ENTRYPOINT ["/usr/local/bin/tributary-gateway"]

FROM base AS tributary-worker
ENTRYPOINT ["/usr/local/bin/tributary-worker"]

FROM base AS tributary-api
ENTRYPOINT ["/usr/local/bin/tributary-api"]

FROM base AS tributary-simulator
ENTRYPOINT ["/usr/local/bin/tributary-simulator"]

FROM ${BINARY} AS runtime

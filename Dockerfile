# lb-agent and lbctl in one image: `kubectl -n lb exec ds/lb -- lbctl service list`.
#
# Two ways to build it (docs/operations.md, "The image"):
# - from source, where a registry is reachable: `docker build -t lb .` (or `podman build`)
#   builds both binaries in debian:12 and runs them on debian:12-slim;
# - from binaries built on a Debian 12 host, without any registry: `cargo xtask image` sets
#   BINARIES=prebuilt (the build context is a directory holding bin/lb-agent and bin/lbctl)
#   and BASE to a Debian 12 it made with debootstrap.
# Only the stages the final one needs are built (BuildKit and buildah skip the others).
ARG BASE=debian:12-slim
ARG BINARIES=source

FROM debian:12 AS source
RUN apt-get update && apt-get install -y --no-install-recommends \
        ca-certificates curl build-essential pkg-config git \
    && rm -rf /var/lib/apt/lists/*
RUN curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain 1.95.0 \
    && /root/.cargo/bin/rustup toolchain install nightly --profile minimal --component rust-src
ENV PATH=/root/.cargo/bin:$PATH
WORKDIR /src
COPY . .
# Installs LLVM 22 and bpf-linker (toolchain.md), then builds both binaries.
RUN cargo xtask setup && cargo build --release -p lb-agent -p lbctl --bins \
    && install -D -t /out target/release/lb-agent target/release/lbctl

FROM scratch AS prebuilt
COPY bin/lb-agent bin/lbctl /out/

FROM ${BINARIES} AS binaries

FROM ${BASE}
# iproute2 for looking at a node from inside the pod; a base that has it already (the
# debootstrapped one) needs no package index, and so no network, to build.
RUN command -v ip >/dev/null || { apt-get update \
        && apt-get install -y --no-install-recommends iproute2 ca-certificates \
        && rm -rf /var/lib/apt/lists/*; }
COPY --from=binaries /out/ /usr/local/bin/
ENTRYPOINT ["lb-agent"]

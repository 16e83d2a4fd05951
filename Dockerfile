# lb-agent and lbctl in one image: `kubectl -n lb exec ds/lb -- lbctl service list`.
FROM debian:12 AS build
RUN apt-get update && apt-get install -y --no-install-recommends \
        ca-certificates curl build-essential pkg-config git \
    && rm -rf /var/lib/apt/lists/*
RUN curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain 1.95.0 \
    && /root/.cargo/bin/rustup toolchain install nightly --profile minimal --component rust-src
ENV PATH=/root/.cargo/bin:$PATH
WORKDIR /src
COPY . .
# Installs LLVM 22 and bpf-linker (toolchain.md), then builds both binaries.
RUN cargo xtask setup && cargo build --release -p lb-agent -p lbctl --bins

FROM debian:12-slim
RUN apt-get update && apt-get install -y --no-install-recommends iproute2 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/lb-agent /src/target/release/lbctl /usr/local/bin/
ENTRYPOINT ["lb-agent"]

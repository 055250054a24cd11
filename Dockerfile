# Builds the orchestrator and the example workers; the runtime image holds just the two binaries.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p orchestrator -p saga-demo --bin orchestrator --bin example-workers

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/orchestrator /src/target/release/example-workers /usr/local/bin/
USER 65532:65532
EXPOSE 8080
CMD ["orchestrator"]

# syntax=docker/dockerfile:1
# The sluice image: one static-ish binary on a distroless base, run as a non-root user.
#
#   docker build -t sluice:0.1.0 .
#   docker run --rm -v "$PWD:/project" -w /project sluice:0.1.0 validate
#
# `sluice export kubernetes` and `sluice export airflow` refer to this image.

# --- build: the release binary (rustls, bundled SQLite: no OpenSSL or libsqlite at run time)
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
# BuildKit caches keep the registry and target between builds of the same checkout.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p sluice \
    && install -D -m 0755 target/release/sluice /out/sluice

# --- run: glibc, libgcc and CA certificates only (~25 MB), user 65532 (nonroot)
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/sluice /usr/local/bin/sluice
USER 65532:65532
WORKDIR /project
ENV SLUICE_PIPELINE=/project/pipeline.yaml
# `sluice serve` listens here (see `sluice export kubernetes`).
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/sluice"]
CMD ["--help"]

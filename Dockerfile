# registry-proxy-agent: node-local pull-through registry mirror for containerd.
# Multi-stage: the TypeScript sources are compiled to JavaScript in a build stage (Node 24 could run
# them directly, but type stripping costs ~70 MiB of memory per process on every node); production
# dependencies are installed in their own stage; the runtime stage carries Node 24, those
# dependencies and the compiled agent only (no tests, no test data, no dev dependencies).
# test/dockerfile.test.ts performs these steps (COPY, RUN, ENTRYPOINT) in a temp dir.
FROM node:24-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json tsconfig.json tsconfig.build.json ./
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY agent ./agent
RUN node_modules/.bin/tsc -p tsconfig.build.json

FROM node:24-bookworm-slim AS deps
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund

FROM node:24-bookworm-slim
ENV NODE_ENV=production
WORKDIR /app
COPY --from=deps /app/node_modules ./node_modules
# package.json says "type": "module", which the compiled ES modules need.
COPY package.json ./
COPY --from=build /app/dist ./dist
# Runs as root with every capability dropped by the DaemonSet: the hosts dir on the node is root-owned.
# A 1 MiB young generation (V8 default: up to 16 MiB per semi-space) keeps peak RSS while streaming
# 3 x 1 GiB ~60 MiB lower: streamed chunks die young and are freed sooner (BENCHMARKS.md).
# At most two glibc malloc arenas (default: one per thread as they contend): ~10 MiB less at peak.
ENV MALLOC_ARENA_MAX=2
ENTRYPOINT ["node", "--max-semi-space-size=1", "/app/dist/agent/main.js"]
CMD ["start", "--config", "/etc/registry-proxy-agent/config.toml"]

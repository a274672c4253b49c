# registry-proxy-agent: node-local pull-through registry mirror for containerd.
# Multi-stage: the build stage type-checks the TypeScript sources and bundles the agent with its npm
# dependencies (scripts/build.ts, esbuild) into dist/; the runtime stage carries Node 24 and dist/
# only: no node_modules, no sources, no tests, no dev dependencies (why a bundle: scripts/build.ts).
# The licenses of the bundled packages are in /app/dist/licenses.
# test/dockerfile.test.ts performs these steps (COPY, RUN, ENTRYPOINT) in a temp dir.
FROM node:24-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json tsconfig.json tsconfig.build.json ./
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY agent ./agent
COPY scripts/build.ts ./scripts/build.ts
RUN node_modules/.bin/tsc -p tsconfig.build.json && node scripts/build.ts

FROM node:24-bookworm-slim
ENV NODE_ENV=production
WORKDIR /app
# package.json says "type": "module", which the bundle's ES modules need.
COPY package.json ./
COPY --from=build /app/dist ./dist
# Runs as root with every capability dropped by the DaemonSet: the hosts dir on the node is root-owned.
# A 1 MiB young generation (V8 default: up to 16 MiB per semi-space) keeps peak RSS while streaming
# 3 x 1 GiB ~60 MiB lower: streamed chunks die young and are freed sooner (BENCHMARKS.md).
# At most two glibc malloc arenas (default: one per thread as they contend): ~10 MiB less at peak.
ENV MALLOC_ARENA_MAX=2
ENTRYPOINT ["node", "--max-semi-space-size=1", "/app/dist/agent/main.js"]
CMD ["start", "--config", "/etc/registry-proxy-agent/config.toml"]

# registry-proxy-agent: node-local pull-through registry mirror for containerd.
# Multi-stage: production dependencies and the sources without tests are prepared in build stages;
# the runtime stage carries Node 24, node_modules and the TypeScript sources that Node 24 runs
# directly. Tests are deleted in a build stage, not in the runtime stage: a file deleted in a later
# layer would still be shipped in the earlier one.
# test/dockerfile.test.ts performs these steps (COPY, RUN, ENTRYPOINT) in a temp dir.
FROM node:24-bookworm-slim AS deps
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund

FROM node:24-bookworm-slim AS sources
WORKDIR /app
COPY agent ./agent
RUN find agent -name '*.test.ts' -type f -delete && find agent -depth -name testdata -type d -exec rm -rf {} +

FROM node:24-bookworm-slim
ENV NODE_ENV=production
WORKDIR /app
COPY --from=deps /app/node_modules ./node_modules
# package.json says "type": "module", which the .ts sources need.
COPY package.json ./
COPY --from=sources /app/agent ./agent
# Runs as root with every capability dropped by the DaemonSet: the hosts dir on the node is root-owned.
ENTRYPOINT ["node", "/app/agent/main.ts"]
CMD ["start", "--config", "/etc/registry-proxy-agent/config.toml"]

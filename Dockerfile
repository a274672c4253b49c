# registry-proxy-agent: node-local pull-through registry mirror for containerd.
# Multi-stage: dependencies are installed in a build stage (production only), the runtime stage
# carries Node 24, node_modules and the TypeScript sources that Node 24 runs directly.
FROM node:24-bookworm-slim AS deps
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund

FROM node:24-bookworm-slim
ENV NODE_ENV=production
WORKDIR /app
COPY --from=deps /app/node_modules ./node_modules
COPY package.json ./
COPY agent ./agent
RUN find agent -name '*.test.ts' -delete && rm -rf agent/containerd/testdata
# Runs as root with every capability dropped by the DaemonSet: the hosts dir on the node is root-owned.
ENTRYPOINT ["node", "/app/agent/main.ts"]
CMD ["start", "--config", "/etc/registry-proxy-agent/config.toml"]

// The monitoring component (manifests/components/monitoring): it renders with kustomize, alone and with
// its ServiceMonitor alternative; every PromQL expression of the alerts and of the Grafana dashboard
// names only metrics and labels that AgentMetrics exports, with label values the code produces, so a
// rename in agent/metrics fails here; every alert is complete. With promtool installed (Debian package
// `prometheus`) the rules and the dashboard's queries are also checked by Prometheus' own parser, and
// the alerts are run against synthetic series (`promtool test rules`).
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative, resolve } from 'node:path';
import { stringify } from 'yaml';
import { inCi } from './fixtures/ci.ts';
import { type Manifest, all, kustomize, one } from './fixtures/kustomize.ts';
import { type TestContext, afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DigestMismatchError } from '../agent/cache/errors.ts';
import type { Outcome } from '../agent/observe/request-record.ts';
import { instrument } from '../agent/metrics/instrument.ts';
import { AgentMetrics, statusClass } from '../agent/metrics/metrics.ts';
import type { ProxyDiagnosis, UpstreamCause, UpstreamFailure } from '../agent/upstream/errors.ts';

const ROOT = resolve(import.meta.dirname, '..');
const MANIFESTS = join(ROOT, 'manifests');
const MONITORING = join(MANIFESTS, 'components/monitoring');
const NAMESPACE = 'registry-proxy-agent';
/** The scrape job of the agents: the alerts, the dashboard and both monitors agree on it. */
const JOB = 'registry-proxy-agent';
const DASHBOARD_KEY = 'registry-proxy-agent.json';

// ---------------------------------------------------------------------------------------------------
// kustomize


const tmp = mkdtempSync(join(tmpdir(), 'rpa-monitoring-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const rendered = new Map<string, Manifest[]>();

/** The base with these components (directories under manifests/components), rendered by `kubectl kustomize`. */
function renderWith(...components: string[]): Manifest[] {
  const key = components.join(',');
  const cached = rendered.get(key);
  if (cached) return cached;
  // kustomize takes directories by relative path: an overlay in a temp dir uses the components.
  const dir = mkdtempSync(join(tmp, 'overlay-'));
  const rel = (path: string) => JSON.stringify(relative(dir, path));
  writeFileSync(
    join(dir, 'kustomization.yaml'),
    [
      'apiVersion: kustomize.config.k8s.io/v1beta1',
      'kind: Kustomization',
      `resources: [${rel(join(MANIFESTS, 'base'))}]`,
      `components: [${components.map((c) => rel(join(MANIFESTS, 'components', c))).join(', ')}]`,
      '',
    ].join('\n'),
  );
  const docs = kustomize(dir, `with components ${key}`);
  rendered.set(key, docs);
  return docs;
}


interface Relabeling {
  sourceLabels?: string[];
  targetLabel?: string;
}
interface ScrapeEndpoint {
  port?: string;
  path?: string;
  interval?: string;
  relabelings?: Relabeling[];
}
interface Monitor extends Manifest {
  spec: {
    jobLabel?: string;
    selector: { matchLabels: Record<string, string> };
    namespaceSelector?: { matchNames?: string[] };
    podMetricsEndpoints?: ScrapeEndpoint[];
    endpoints?: ScrapeEndpoint[];
  };
}
interface PodTemplateOwner extends Manifest {
  spec: { template: { metadata: { labels: Record<string, string> }; spec: { containers: { name: string; ports?: { name?: string }[] }[] } } };
}
interface ServiceManifest extends Manifest {
  spec: { selector: Record<string, string>; ports: { name?: string }[] };
}
interface ConfigMapManifest extends Manifest {
  data?: Record<string, string>;
}
interface AlertRule {
  alert?: string;
  record?: string;
  expr: string;
  for?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}
interface RuleGroup {
  name: string;
  rules: AlertRule[];
}
interface PrometheusRuleManifest extends Manifest {
  spec: { groups: RuleGroup[] };
}

const withPodMonitor = (): Manifest[] => renderWith('monitoring');
const withServiceMonitor = (): Manifest[] => renderWith('monitoring', 'monitoring/servicemonitor');
const podMonitor = (): Monitor => one<Monitor>(withPodMonitor(), 'PodMonitor', 'registry-proxy-agent');
const serviceMonitor = (): Monitor => one<Monitor>(withServiceMonitor(), 'ServiceMonitor', 'registry-proxy-agent');
const ruleGroups = (): RuleGroup[] => one<PrometheusRuleManifest>(withPodMonitor(), 'PrometheusRule', 'registry-proxy-agent').spec.groups;
const alerts = (): AlertRule[] => ruleGroups().flatMap((g) => g.rules);
const dashboardText = (): string => readFileSync(join(MONITORING, 'dashboard.json'), 'utf8');

/** Labels the Prometheus Operator puts on every target, plus the monitor's own relabelings. */
const OPERATOR_TARGET_LABELS = ['job', 'instance', 'namespace', 'pod', 'container', 'endpoint'];
function relabelTargets(endpoints: readonly ScrapeEndpoint[]): string[] {
  return endpoints.flatMap((e) => (e.relabelings ?? []).flatMap((r) => (r.targetLabel ? [r.targetLabel] : []))).sort();
}

// ---------------------------------------------------------------------------------------------------
// What the agent exports: names, types and label names from AgentMetrics itself

interface SeriesInfo {
  readonly labels: ReadonlySet<string>;
  /** A counter, or a histogram's _bucket/_sum/_count: rate() and increase() make sense on it. */
  readonly counter: boolean;
}

function labelNamesOf(metric: object): string[] {
  const names: unknown = (metric as { labelNames?: unknown }).labelNames;
  return Array.isArray(names) ? names.filter((n): n is string => typeof n === 'string') : [];
}

/** Every series name the agent's /metrics can contain, with its labels (target labels included), plus `up`. */
function catalogue(targetLabels: readonly string[]): Map<string, SeriesInfo> {
  const series = new Map<string, SeriesInfo>();
  const add = (name: string, labels: readonly string[], counter: boolean) => series.set(name, { labels: new Set([...labels, ...targetLabels]), counter });
  for (const metric of new AgentMetrics().registry.getMetricsAsArray()) {
    const labels = labelNamesOf(metric);
    switch (String(metric.type)) {
      case 'counter':
        add(metric.name, labels, true);
        break;
      case 'gauge':
        add(metric.name, labels, false);
        break;
      case 'histogram':
        add(`${metric.name}_bucket`, [...labels, 'le'], true);
        add(`${metric.name}_sum`, labels, true);
        add(`${metric.name}_count`, labels, true);
        break;
      case 'summary':
        add(metric.name, [...labels, 'quantile'], false);
        add(`${metric.name}_sum`, labels, true);
        add(`${metric.name}_count`, labels, true);
        break;
      default:
        throw new Error(`metric ${metric.name} has type ${String(metric.type)}, unknown to this test`);
    }
  }
  add('up', [], false);
  return series;
}

// Label values the code can produce. Causes and request kinds are unions in the code: `satisfies`
// makes tsc fail here when one is added, renamed or removed.
const PROXY_CODES = {
  cp_https_refused: 0,
  cp_auth_failed: 0,
  cp_no_cloud_connector: 0,
  cp_unreachable: 0,
  cp_denied: 0,
  proxy_unreachable: 0,
  proxy_refused: 0,
  tls: 0,
} satisfies Record<ProxyDiagnosis['code'], 0>;
const FAILURES = { unreachable: 0, timeout: 0, status: 0, invalid: 0, redirect: 0, destination: 0, proxy: 0 } satisfies Record<UpstreamFailure, 0>;
const KINDS = { base: 0, manifest: 0, blob: 0, token: 0 } satisfies Record<Outcome['kind'], 0>;
/** The upstream client's causes (UpstreamCause): route diagnosis codes, failures, and these. */
const CAUSE_RECORD = { ...PROXY_CODES, ...FAILURES, refused: 0, status_5xx: 0, body_cut: 0, body_timeout: 0 } satisfies Record<UpstreamCause, 0>;
const CAUSES = Object.keys(CAUSE_RECORD);

/** metric → label → every value the agent produces, for the labels whose values are a closed set. */
async function knownValues(): Promise<Map<string, Map<string, Set<string>>>> {
  const metrics = new AgentMetrics({ processMetrics: false });
  const hooks = instrument(metrics, 1024);
  // One-hot gauges list every state; the hooks label mismatches and served bytes themselves.
  hooks.wiring({
    hosts: [{ registry: 'r', path: '/hosts/r/hosts.toml', state: 'written', preservedAdminFile: false }],
    containerd: { state: 'ok', ok: true, message: '', configFiles: [], warnings: [] },
  });
  hooks.corrupt(new DigestMismatchError('sha256:a', 'sha256:b'));
  hooks.fillFailed(new DigestMismatchError('sha256:a', 'sha256:b'));
  for (const cache of ['hit', 'miss']) {
    hooks.request({ id: '1', method: 'GET', outcome: { kind: 'blob', registry: 'r', cache, bytes: 1 }, status: 200, durationMs: 1, aborted: false });
  }
  const known = new Map<string, Map<string, Set<string>>>();
  const put = (metric: string, label: string, values: Iterable<string>) => {
    const labels = known.get(metric) ?? new Map<string, Set<string>>();
    known.set(metric, labels);
    labels.set(label, new Set([...(labels.get(label) ?? []), ...values]));
  };
  const observed: Record<string, string[]> = {
    registry_proxy_hosts_toml_state: ['state'],
    registry_proxy_containerd_config_state: ['state'],
    registry_proxy_digest_mismatches_total: ['where'],
    registry_proxy_served_bytes_total: ['source'],
  };
  for (const metric of await metrics.registry.getMetricsAsJSON()) {
    for (const label of observed[metric.name] ?? []) {
      put(metric.name, label, metric.values.flatMap((v) => (v.labels[label] === undefined ? [] : [String(v.labels[label])])));
    }
  }
  for (const [metric, labels] of Object.entries(observed)) {
    for (const label of labels) expect(known.get(metric)?.get(label)?.size ?? 0, `${metric} ${label} values observed`).toBeGreaterThan(0);
  }
  const statusClasses = Array.from({ length: 600 }, (_, status) => statusClass(status));
  put('registry_proxy_upstream_errors_total', 'cause', CAUSES);
  put('registry_proxy_requests_total', 'status_class', statusClasses);
  put('registry_proxy_requests_total', 'kind', Object.keys(KINDS));
  put('registry_proxy_request_duration_seconds_bucket', 'kind', Object.keys(KINDS));
  put('registry_proxy_token_requests_total', 'for', ['puller', 'agent']);
  put('registry_proxy_token_requests_total', 'status_class', statusClasses);
  put('up', 'job', [JOB]);
  return known;
}

// ---------------------------------------------------------------------------------------------------
// A PromQL parser, enough to know which metrics, labels and label values an expression uses and which
// labels its result carries. Anything it cannot parse fails the test.

type Token = { kind: 'ident' | 'number' | 'duration' | 'string' | 'punct'; text: string };

function tokenize(source: string): Token[] {
  const tokens: Token[] = [];
  const rules: [Token['kind'] | 'skip', RegExp][] = [
    ['skip', /^(?:\s+|#[^\n]*)/],
    ['duration', /^(?:\d+(?:ms|s|m|h|d|w|y))+(?![\w:])/],
    ['number', /^(?:0x[0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)/],
    ['ident', /^[a-zA-Z_:][\w:]*/],
    ['string', /^(?:"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)/],
    ['punct', /^(?:==|!=|>=|<=|=~|!~|[-+*/%^><=(){}[\],:@])/],
  ];
  let rest = source;
  while (rest.length > 0) {
    const rule = rules.find(([, pattern]) => pattern.test(rest));
    if (!rule) throw new Error(`PromQL: cannot read ${JSON.stringify(rest.slice(0, 20))} in ${source}`);
    const text = (rule[1].exec(rest) as RegExpExecArray)[0];
    rest = rest.slice(text.length);
    if (rule[0] !== 'skip') tokens.push({ kind: rule[0], text });
  }
  return tokens;
}

function unquote(text: string): string {
  if (text.startsWith('`')) return text.slice(1, -1);
  const escapes: Record<string, string> = { n: '\n', t: '\t', '\\': '\\', '"': '"', "'": "'" };
  return text.slice(1, -1).replace(/\\(.)/g, (_, c: string) => escapes[c] ?? `\\${c}`);
}

interface Matcher {
  label: string;
  op: string;
  value: string;
}
type PromNode =
  | { type: 'number' }
  | { type: 'string'; value: string }
  | { type: 'selector'; name: string | undefined; matchers: Matcher[] }
  | { type: 'call'; fn: string; args: PromNode[] }
  | { type: 'aggregate'; op: string; grouping: { without: boolean; labels: string[] } | undefined; args: PromNode[] }
  | { type: 'binary'; op: string; lhs: PromNode; rhs: PromNode; bool: boolean; matching: BinaryMatching | undefined }
  | { type: 'wrap'; expr: PromNode };

interface BinaryMatching {
  ignoring: boolean;
  labels: string[];
  group: { side: 'left' | 'right'; labels: string[] } | undefined;
}

const AGGREGATIONS = new Set(['sum', 'avg', 'count', 'min', 'max', 'group', 'stddev', 'stdvar', 'topk', 'bottomk', 'quantile', 'count_values', 'limitk', 'limit_ratio']);
const FUNCTIONS = new Set([
  'abs', 'absent', 'absent_over_time', 'avg_over_time', 'ceil', 'changes', 'clamp', 'clamp_max', 'clamp_min', 'count_over_time',
  'day_of_month', 'day_of_week', 'days_in_month', 'delta', 'deriv', 'exp', 'floor', 'histogram_quantile', 'holt_winters', 'hour',
  'idelta', 'increase', 'irate', 'label_join', 'label_replace', 'last_over_time', 'ln', 'log10', 'log2', 'max_over_time',
  'min_over_time', 'minute', 'month', 'predict_linear', 'present_over_time', 'quantile_over_time', 'rate', 'resets', 'round',
  'scalar', 'sgn', 'sort', 'sort_desc', 'sqrt', 'stddev_over_time', 'stdvar_over_time', 'sum_over_time', 'time', 'timestamp',
  'vector', 'year',
]);
const COUNTER_FUNCTIONS = new Set(['rate', 'irate', 'increase', 'resets']);
const PRECEDENCE: Record<string, number> = {
  or: 1, and: 2, unless: 2, '==': 3, '!=': 3, '<': 3, '<=': 3, '>': 3, '>=': 3, '+': 4, '-': 4, '*': 5, '/': 5, '%': 5, atan2: 5, '^': 6,
};
const SET_OPERATORS = new Set(['and', 'or', 'unless']);
const COMPARISONS = new Set(['==', '!=', '<', '<=', '>', '>=']);

function parsePromQL(source: string): PromNode {
  const tokens = tokenize(source);
  let at = 0;
  const peek = (offset = 0): Token | undefined => tokens[at + offset];
  const is = (text: string, offset = 0) => peek(offset)?.text === text && peek(offset)?.kind !== 'string';
  const fail = (what: string): never => {
    throw new Error(`PromQL: expected ${what} at token ${at} (${JSON.stringify(peek()?.text ?? 'end')}) in: ${source}`);
  };
  const next = (): Token => tokens[at++] ?? fail('more');
  const consume = (text: string) => (is(text) ? next() : fail(JSON.stringify(text)));

  function labelList(): string[] {
    consume('(');
    const labels: string[] = [];
    while (!is(')')) {
      const label = next();
      if (label.kind !== 'ident') fail('a label name');
      labels.push(label.text);
      if (!is(')')) consume(',');
    }
    consume(')');
    return labels;
  }

  function args(): PromNode[] {
    consume('(');
    const list: PromNode[] = [];
    while (!is(')')) {
      list.push(expr(0));
      if (!is(')')) consume(',');
    }
    consume(')');
    return list;
  }

  function matchers(): Matcher[] {
    consume('{');
    const list: Matcher[] = [];
    while (!is('}')) {
      const label = next();
      if (label.kind !== 'ident') fail('a label name');
      const op = next();
      if (!['=', '!=', '=~', '!~'].includes(op.text)) fail('a matcher operator');
      const value = next();
      if (value.kind !== 'string') fail('a string');
      list.push({ label: label.text, op: op.text, value: unquote(value.text) });
      if (!is('}')) consume(',');
    }
    consume('}');
    return list;
  }

  function primary(): PromNode {
    const token = next();
    if (token.kind === 'number' || (token.kind === 'ident' && /^(?:inf|nan)$/i.test(token.text))) return { type: 'number' };
    if (token.kind === 'string') return { type: 'string', value: unquote(token.text) };
    if (token.text === '(') {
      const inner = expr(0);
      consume(')');
      return { type: 'wrap', expr: inner };
    }
    if (token.text === '{') {
      at -= 1;
      return { type: 'selector', name: undefined, matchers: matchers() };
    }
    if (token.kind !== 'ident') return fail('an expression');
    if (AGGREGATIONS.has(token.text) && (is('(') || is('by') || is('without'))) {
      let grouping: { without: boolean; labels: string[] } | undefined;
      if (is('by') || is('without')) grouping = { without: next().text === 'without', labels: labelList() };
      const list = args();
      if (!grouping && (is('by') || is('without'))) grouping = { without: next().text === 'without', labels: labelList() };
      return { type: 'aggregate', op: token.text, grouping, args: list };
    }
    if (is('(')) {
      if (!FUNCTIONS.has(token.text)) fail(`a known function, not ${token.text}`);
      return { type: 'call', fn: token.text, args: args() };
    }
    if (PRECEDENCE[token.text] !== undefined || ['by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'bool', 'offset'].includes(token.text)) {
      fail(`an expression, not the keyword ${token.text}`);
    }
    return { type: 'selector', name: token.text, matchers: is('{') ? matchers() : [] };
  }

  function postfix(): PromNode {
    let node = primary();
    for (;;) {
      if (is('[')) {
        next();
        if (next().kind !== 'duration') fail('a duration');
        if (is(':')) {
          next();
          if (peek()?.kind === 'duration') next();
        }
        consume(']');
        node = { type: 'wrap', expr: node };
      } else if (is('offset')) {
        next();
        if (is('-')) next();
        if (next().kind !== 'duration') fail('a duration');
      } else if (is('@')) {
        next();
        if (is('-')) next();
        const at_ = next();
        if (at_.kind === 'ident') {
          consume('(');
          consume(')');
        } else if (at_.kind !== 'number') fail('a timestamp');
      } else {
        return node;
      }
    }
  }

  function unary(): PromNode {
    if (is('-') || is('+')) {
      next();
      return { type: 'wrap', expr: unary() };
    }
    return postfix();
  }

  function expr(minPrecedence: number): PromNode {
    let lhs = unary();
    for (;;) {
      const op = peek();
      const precedence = op && op.kind !== 'string' ? PRECEDENCE[op.text] : undefined;
      if (op === undefined || precedence === undefined || precedence < minPrecedence) return lhs;
      next();
      const bool = is('bool');
      if (bool) next();
      let matching: BinaryMatching | undefined;
      if (is('on') || is('ignoring')) {
        matching = { ignoring: next().text === 'ignoring', labels: labelList(), group: undefined };
        if (is('group_left') || is('group_right')) {
          const side = next().text === 'group_left' ? 'left' : 'right';
          matching.group = { side, labels: is('(') ? labelList() : [] };
        }
      }
      const rhs = expr(op.text === '^' ? precedence : precedence + 1);
      lhs = { type: 'binary', op: op.text, lhs, rhs, bool, matching };
    }
  }

  const root = expr(0);
  if (at !== tokens.length) fail('the end of the expression');
  return root;
}

function isScalar(node: PromNode): boolean {
  switch (node.type) {
    case 'number':
      return true;
    case 'wrap':
      return isScalar(node.expr);
    case 'call':
      return node.fn === 'scalar' || node.fn === 'time';
    case 'binary':
      return isScalar(node.lhs) && isScalar(node.rhs);
    default:
      return false;
  }
}

/** The vector argument of an aggregation or function: the last argument (topk(k, v), quantile(q, v)…). */
const vectorArg = (list: readonly PromNode[]): PromNode | undefined => [...list].reverse().find((a) => a.type !== 'number' && a.type !== 'string' && !isScalar(a));

/** The label names the result of `node` can carry. */
function outputLabels(node: PromNode, series: ReadonlyMap<string, SeriesInfo>): Set<string> {
  const of = (n: PromNode | undefined) => (n ? outputLabels(n, series) : new Set<string>());
  switch (node.type) {
    case 'number':
    case 'string':
      return new Set();
    case 'selector':
      return new Set(node.name === undefined ? [] : (series.get(node.name)?.labels ?? []));
    case 'wrap':
      return of(node.expr);
    case 'call': {
      if (node.fn === 'absent' || node.fn === 'absent_over_time') {
        const inner = innermostSelector(node.args[0]);
        return new Set(inner?.matchers.filter((m) => m.op === '=').map((m) => m.label) ?? []);
      }
      if (node.fn === 'histogram_quantile') return new Set([...of(node.args[1])].filter((l) => l !== 'le'));
      if (node.fn === 'label_replace' || node.fn === 'label_join') {
        const target = node.args[1];
        return new Set([...of(node.args[0]), ...(target?.type === 'string' ? [target.value] : [])]);
      }
      if (['vector', 'time', 'scalar'].includes(node.fn)) return new Set();
      return of(vectorArg(node.args) ?? node.args[0]);
    }
    case 'aggregate': {
      const inner = of(vectorArg(node.args));
      if (['topk', 'bottomk', 'limitk', 'limit_ratio'].includes(node.op)) return inner;
      const extra = node.op === 'count_values' && node.args[0]?.type === 'string' ? [node.args[0].value] : [];
      if (!node.grouping) return new Set(extra);
      if (node.grouping.without) return new Set([...[...inner].filter((l) => !node.grouping?.labels.includes(l)), ...extra]);
      return new Set([...node.grouping.labels, ...extra]);
    }
    case 'binary': {
      const lhs = of(node.lhs);
      const rhs = of(node.rhs);
      if (node.op === 'or') return new Set([...lhs, ...rhs]);
      if (SET_OPERATORS.has(node.op)) return lhs;
      if (isScalar(node.lhs)) return rhs;
      if (isScalar(node.rhs)) return lhs;
      const m = node.matching;
      if (m?.group) return new Set([...(m.group.side === 'left' ? lhs : rhs), ...m.group.labels]);
      if (COMPARISONS.has(node.op) && !node.bool) return lhs;
      if (m && !m.ignoring) return new Set(m.labels.filter((l) => lhs.has(l)));
      if (m) return new Set([...lhs].filter((l) => !m.labels.includes(l)));
      return lhs;
    }
  }
}

function innermostSelector(node: PromNode | undefined): Extract<PromNode, { type: 'selector' }> | undefined {
  if (!node) return undefined;
  if (node.type === 'selector') return node;
  if (node.type === 'wrap') return innermostSelector(node.expr);
  return undefined;
}

function selectors(node: PromNode): Extract<PromNode, { type: 'selector' }>[] {
  switch (node.type) {
    case 'selector':
      return [node];
    case 'wrap':
      return selectors(node.expr);
    case 'call':
    case 'aggregate':
      return node.args.flatMap(selectors);
    case 'binary':
      return [...selectors(node.lhs), ...selectors(node.rhs)];
    default:
      return [];
  }
}

type Known = ReadonlyMap<string, ReadonlyMap<string, ReadonlySet<string>>>;

/** Whether a matcher's value can select one of the known values (Grafana variables select anything). */
function matcherProblem(metric: string, m: Matcher, known: Known): string | undefined {
  const values = known.get(metric)?.get(m.label);
  if (!values || m.value.includes('$')) return undefined;
  if (m.op === '=' || m.op === '!=') {
    return values.has(m.value) ? undefined : `${metric}{${m.label}${m.op}"${m.value}"}: the agent never sets ${m.label}="${m.value}" (it sets ${[...values].join(', ')})`;
  }
  // Prometheus anchors label regexes; each alternative must select something.
  const alternatives = /[()]/.test(m.value) ? [m.value] : m.value.split('|');
  for (const alternative of alternatives) {
    const pattern = new RegExp(`^(?:${alternative})$`);
    if (![...values].some((v) => pattern.test(v))) return `${metric}{${m.label}${m.op}"${m.value}"}: "${alternative}" matches none of ${[...values].join(', ')}`;
  }
  return undefined;
}

/** Everything wrong with an expression: unknown metrics, labels, label values, misused counters. */
function problems(node: PromNode, series: ReadonlyMap<string, SeriesInfo>, known: Known): string[] {
  const found: string[] = [];
  const visit = (n: PromNode): void => {
    switch (n.type) {
      case 'selector': {
        if (n.name === undefined) {
          found.push('a selector without a metric name');
          break;
        }
        const info = series.get(n.name);
        if (!info) {
          found.push(`metric ${n.name} is not exported by the agent`);
          break;
        }
        for (const m of n.matchers) {
          if (!info.labels.has(m.label)) found.push(`${n.name} has no label ${m.label} (labels: ${[...info.labels].join(', ')})`);
          const problem = matcherProblem(n.name, m, known);
          if (problem) found.push(problem);
        }
        break;
      }
      case 'wrap':
        visit(n.expr);
        break;
      case 'call': {
        if (COUNTER_FUNCTIONS.has(n.fn)) {
          const inner = innermostSelector(n.args[0]);
          if (inner?.name && series.get(inner.name)?.counter === false) found.push(`${n.fn}() of ${inner.name}, which is not a counter`);
        }
        n.args.forEach(visit);
        break;
      }
      case 'aggregate': {
        const inner = vectorArg(n.args);
        const available = inner ? outputLabels(inner, series) : new Set<string>();
        for (const label of n.grouping?.labels ?? []) {
          if (!available.has(label)) found.push(`${n.op} ${n.grouping?.without ? 'without' : 'by'} (${label}): its argument has no label ${label}`);
        }
        n.args.forEach(visit);
        break;
      }
      case 'binary': {
        const m = n.matching;
        if (m) {
          const lhs = outputLabels(n.lhs, series);
          const rhs = outputLabels(n.rhs, series);
          for (const label of m.labels) if (!lhs.has(label) || !rhs.has(label)) found.push(`${m.ignoring ? 'ignoring' : 'on'}(${label}): not on both sides`);
          const one = m.group?.side === 'left' ? rhs : lhs;
          for (const label of m.group?.labels ?? []) if (!one.has(label)) found.push(`group_${m.group?.side}(${label}): not on the "one" side`);
        }
        visit(n.lhs);
        visit(n.rhs);
        break;
      }
      default:
        break;
    }
  };
  visit(node);
  return found;
}

/** Grafana's interval variables as a duration PromQL accepts; label variables stay inside their strings. */
function grafanaToPromQL(expr: string): string {
  return expr.replace(/\$(?:__rate_interval|__interval|__range)\b|\$\{(?:__rate_interval|__interval|__range)\}/g, '5m');
}

/** `$labels.x` / `.Labels.x` references in an alert template. */
function templateLabels(template: string): string[] {
  return [...template.matchAll(/(?:\$labels|\.Labels)\.([a-zA-Z_]\w*)/g)].map((m) => m[1] as string);
}

/** `eq $labels.x "v"` comparisons in an alert template, as [label, value]. */
function templateComparisons(template: string): [string, string][] {
  return [...template.matchAll(/eq\s+\$labels\.([a-zA-Z_]\w*)\s+"([^"]*)"/g)].map((m) => [m[1] as string, m[2] as string]);
}

interface Panel {
  id: number;
  type: string;
  title: string;
  gridPos: { x: number; y: number; w: number; h: number };
  datasource?: { type?: string; uid?: string };
  targets?: { refId: string; expr: string; legendFormat?: string; datasource?: { type?: string; uid?: string } }[];
}
interface Variable {
  name: string;
  type: string;
  query: unknown;
}
interface Dashboard {
  uid: string;
  title: string;
  panels: Panel[];
  templating: { list: Variable[] };
}

const dashboard = (): Dashboard => JSON.parse(dashboardText()) as Dashboard;
const panels = (): Panel[] => dashboard().panels.filter((p) => p.type !== 'row');
const targets = () => panels().flatMap((p) => (p.targets ?? []).map((t) => ({ panel: p.title, ...t })));
const variableQuery = (v: Variable): string => (typeof v.query === 'string' ? v.query : String((v.query as { query?: unknown }).query ?? ''));

// ---------------------------------------------------------------------------------------------------
// promtool (Debian package `prometheus`): optional locally, required in CI

const PROMTOOL = process.env['PROMTOOL'] ?? 'promtool';
const promtoolAvailable = !spawnSync(PROMTOOL, ['--version'], { encoding: 'utf8' }).error;
const NO_PROMTOOL = `promtool not found (${PROMTOOL}): install the Debian package "prometheus" (it ships /usr/bin/promtool) or set PROMTOOL`;

/** Skips a promtool test where promtool is missing, except in CI (`CI` set), where it fails: a green CI run has run them. */
function needPromtool(ctx: TestContext): void {
  if (promtoolAvailable) return;
  if (inCi()) throw new Error(`${NO_PROMTOOL} (CI: the promtool checks may not be skipped)`);
  ctx.skip(NO_PROMTOOL);
}

function promtool(args: string[], files: Record<string, unknown>): { ok: boolean; output: string } {
  const dir = mkdtempSync(join(tmp, 'promtool-'));
  for (const [name, content] of Object.entries(files)) writeFileSync(join(dir, name), stringify(content, { lineWidth: 0 }));
  const result = spawnSync(PROMTOOL, args, { cwd: dir, encoding: 'utf8' });
  return { ok: result.status === 0, output: `${result.stdout}\n${result.stderr}` };
}

// ---------------------------------------------------------------------------------------------------

let series: Map<string, SeriesInfo>;
let known: Map<string, Map<string, Set<string>>>;
beforeAll(async () => {
  series = catalogue([...OPERATOR_TARGET_LABELS, ...relabelTargets(podMonitor().spec.podMetricsEndpoints ?? [])]);
  known = await knownValues();
});

describe('monitoring component: rendering', () => {
  it('adds a PodMonitor, a PrometheusRule and the dashboard ConfigMap to the base, all in the agent namespace', () => {
    const added = withPodMonitor()
      .filter((d) => ['PodMonitor', 'ServiceMonitor', 'PrometheusRule'].includes(d.kind) || (d.kind === 'ConfigMap' && d.metadata.name.includes('dashboard')))
      .map((d) => `${d.kind}/${d.metadata.name}`)
      .sort();
    expect(added).toEqual(['ConfigMap/registry-proxy-agent-dashboard', 'PodMonitor/registry-proxy-agent', 'PrometheusRule/registry-proxy-agent']);
    for (const kind of ['PodMonitor', 'PrometheusRule']) expect(one<Manifest>(withPodMonitor(), kind).apiVersion).toBe('monitoring.coreos.com/v1');
    for (const doc of withPodMonitor().filter((d) => d.kind !== 'Namespace' && !d.kind.startsWith('Cluster') && d.kind !== 'CustomResourceDefinition')) {
      expect(doc.metadata.namespace, `${doc.kind}/${doc.metadata.name}`).toBe(NAMESPACE);
    }
  });

  it('the PodMonitor scrapes port metrics of the agent pods, /metrics every 30s, as job registry-proxy-agent with a node label', () => {
    const monitor = podMonitor();
    const ds = one<PodTemplateOwner>(withPodMonitor(), 'DaemonSet', 'registry-proxy-agent');
    const podLabels = ds.spec.template.metadata.labels;
    expect(podLabels).toMatchObject(monitor.spec.selector.matchLabels);
    expect(monitor.spec.namespaceSelector?.matchNames).toEqual([NAMESPACE]);
    expect(podLabels[monitor.spec.jobLabel ?? ''], 'jobLabel names a pod label whose value is the job').toBe(JOB);
    const endpoints = monitor.spec.podMetricsEndpoints ?? [];
    expect(endpoints.map((e) => [e.port, e.path, e.interval])).toEqual([['metrics', '/metrics', '30s']]);
    const ports = ds.spec.template.spec.containers.flatMap((c) => (c.ports ?? []).map((p) => p.name));
    expect(ports).toContain('metrics');
    expect(relabelTargets(endpoints)).toEqual(['node']);
    expect(endpoints[0]?.relabelings?.[0]?.sourceLabels).toEqual(['__meta_kubernetes_pod_node_name']);
  });

  it('the servicemonitor component replaces the PodMonitor with an equivalent ServiceMonitor on the metrics Service', () => {
    const docs = withServiceMonitor();
    expect(all(docs, 'PodMonitor')).toEqual([]);
    one(docs, 'PrometheusRule', 'registry-proxy-agent');
    const monitor = serviceMonitor();
    expect(monitor.apiVersion).toBe('monitoring.coreos.com/v1');
    expect(monitor.metadata.namespace).toBe(NAMESPACE);
    const services = all(docs, 'Service').filter((s) => Object.entries(monitor.spec.selector.matchLabels).every(([k, v]) => s.metadata.labels?.[k] === v));
    expect(services.map((s) => s.metadata.name)).toEqual(['registry-proxy-agent-metrics']);
    const service = services[0] as ServiceManifest;
    expect(service.metadata.labels?.[monitor.spec.jobLabel ?? ''], 'jobLabel names a Service label whose value is the job').toBe(JOB);
    const ds = one<PodTemplateOwner>(docs, 'DaemonSet', 'registry-proxy-agent');
    expect(ds.spec.template.metadata.labels).toMatchObject(service.spec.selector);
    const endpoints = monitor.spec.endpoints ?? [];
    expect(endpoints.map((e) => [e.port, e.path, e.interval])).toEqual([['metrics', '/metrics', '30s']]);
    expect(service.spec.ports.map((p) => p.name)).toContain('metrics');
    // The same target labels as the PodMonitor: the alerts and the dashboard work with either.
    expect(relabelTargets(endpoints)).toEqual(relabelTargets(podMonitor().spec.podMetricsEndpoints ?? []));
    expect(endpoints[0]?.relabelings).toEqual(podMonitor().spec.podMetricsEndpoints?.[0]?.relabelings);
  });

  it('ships the dashboard as a ConfigMap for the Grafana sidecar: stable name, grafana_dashboard label, a unique key', () => {
    const configMap = one<ConfigMapManifest>(withPodMonitor(), 'ConfigMap', 'registry-proxy-agent-dashboard');
    expect(configMap.metadata.labels?.['grafana_dashboard']).toBe('1');
    expect(Object.keys(configMap.data ?? {})).toEqual([DASHBOARD_KEY]);
    expect(configMap.data?.[DASHBOARD_KEY]).toBe(dashboardText());
    // kubectl apply keeps a copy in an annotation, limited to 256 KiB with the others.
    expect(Buffer.byteLength(dashboardText())).toBeLessThan(128 * 1024);
  });
});

describe('monitoring component: alerts', () => {
  const names = (): string[] => alerts().map((a) => a.alert ?? '');

  it('has the alerts that matter, each once, and no recording rules', () => {
    expect(alerts().every((r) => r.alert !== undefined && r.record === undefined)).toBe(true);
    expect(new Set(names()).size).toBe(names().length);
    expect([...names()].sort()).toEqual(
      [
        'RegistryProxyAgentDown',
        'RegistryProxyAgentMetricsAbsent',
        'RegistryProxyCacheBypassed',
        'RegistryProxyCacheNearlyFull',
        'RegistryProxyConnectionCapReached',
        'RegistryProxyConnectivityProxyErrors',
        'RegistryProxyDestinationRefused',
        'RegistryProxyDownloadQueueFull',
        'RegistryProxyContainerdNotWired',
        'RegistryProxyDigestMismatches',
        'RegistryProxyHostsTomlNotWritten',
        'RegistryProxyPullErrors',
        'RegistryProxyUpstreamDownloadsBreaking',
        'RegistryProxyUpstreamUnreachable',
        'RegistryProxyUpstreamUnreachableManyNodes',
      ].sort(),
    );
  });

  it('every alert has for, a severity, a summary and a description with a hint', () => {
    for (const rule of alerts()) {
      expect(rule.for, `${rule.alert} for`).toMatch(/^(?:\d+(?:ms|s|m|h|d|w|y))+$/);
      expect(['critical', 'warning', 'info'], `${rule.alert} severity`).toContain(rule.labels?.['severity']);
      expect(rule.annotations?.['summary']?.trim(), `${rule.alert} summary`).toBeTruthy();
      expect(rule.annotations?.['description']?.length ?? 0, `${rule.alert} description`).toBeGreaterThan(200);
      expect(rule.annotations?.['description'], `${rule.alert} description says what to check or fix`).toMatch(/\b(?:Check|Fix|fix|Raise|check|kubectl|Find)\b/);
    }
  });

  it('every expression uses only metrics, labels and label values the agent exports', () => {
    for (const rule of alerts()) expect(problems(parsePromQL(rule.expr), series, known), `${rule.alert}: ${rule.expr}`).toEqual([]);
  });

  it('the templates use only labels the expression keeps, and compare them with values the agent produces', () => {
    for (const rule of alerts()) {
      const node = parsePromQL(rule.expr);
      const labels = outputLabels(node, series);
      const text = Object.values(rule.annotations ?? {}).join('\n');
      for (const label of templateLabels(text)) expect(labels.has(label), `${rule.alert}: $labels.${label} (result labels: ${[...labels].join(', ')})`).toBe(true);
      const metrics = selectors(node).flatMap((s) => (s.name ? [s.name] : []));
      for (const [label, value] of templateComparisons(text)) {
        const values = new Set(metrics.flatMap((m) => [...(known.get(m)?.get(label) ?? [])]));
        expect(values.has(value), `${rule.alert}: eq $labels.${label} "${value}" (the agent sets ${[...values].join(', ')})`).toBe(true);
      }
    }
  });

  it('a description that explains the values of a label explains every value the expression can select', () => {
    for (const rule of alerts()) {
      const text = rule.annotations?.['description'] ?? '';
      const explained = templateComparisons(text);
      const node = parsePromQL(rule.expr);
      for (const label of new Set(explained.map(([l]) => l))) {
        const selectable = new Set<string>();
        for (const selector of selectors(node)) {
          const values = selector.name ? known.get(selector.name)?.get(label) : undefined;
          const filters = selector.matchers.filter((m) => m.label === label);
          for (const value of values ?? []) {
            const kept = filters.every((m) => {
              const matches = m.op.endsWith('~') ? new RegExp(`^(?:${m.value})$`).test(value) : value === m.value;
              return m.op.startsWith('=') ? matches : !matches;
            });
            if (kept) selectable.add(value);
          }
        }
        const handled = new Set(explained.filter(([l]) => l === label).map(([, v]) => v));
        expect([...selectable].filter((v) => !handled.has(v)), `${rule.alert}: values of ${label} without an explanation`).toEqual([]);
      }
    }
  });

  it('the Connectivity Proxy alert explains every cp_* cause of the code', () => {
    const rule = alerts().find((a) => a.alert === 'RegistryProxyConnectivityProxyErrors');
    const explained = templateComparisons(rule?.annotations?.['description'] ?? '').map(([, v]) => v);
    expect(explained.sort()).toEqual(CAUSES.filter((c) => c.startsWith('cp_')).sort());
  });

  it('selects the agents by the job name the monitors give them', () => {
    const ups = alerts().flatMap((a) => selectors(parsePromQL(a.expr)).filter((s) => s.name === 'up'));
    expect(ups.length).toBeGreaterThan(0);
    for (const up of ups) expect(up.matchers).toContainEqual({ label: 'job', op: '=', value: JOB });
  });

  it('the parser used here refuses what is not PromQL or not exported', () => {
    expect(() => parsePromQL('sum by (registry (x)')).toThrow();
    expect(() => parsePromQL('rate(x[5m]')).toThrow();
    expect(() => parsePromQL('nosuchfunction(x)')).toThrow();
    const check = (expr: string) => problems(parsePromQL(expr), series, known);
    expect(check('registry_proxy_cache_bytes / registry_proxy_cache_max_bytes > 0.95')).toEqual([]);
    expect(check('registry_proxy_cache_byte > 0')).toEqual(['metric registry_proxy_cache_byte is not exported by the agent']);
    expect(check('registry_proxy_cache_bytes{registry="x"}')).toHaveLength(1);
    expect(check('sum by (cause) (registry_proxy_requests_total)')).toHaveLength(1);
    expect(check('rate(registry_proxy_cache_bytes[5m])')).toHaveLength(1);
    expect(check('registry_proxy_containerd_config_state{state="okay"}')).toHaveLength(1);
    expect(check('registry_proxy_upstream_errors_total{cause=~"cp_nope|timeout"}')).toHaveLength(1);
    expect(check('histogram_quantile(0.9, sum by (le) (rate(registry_proxy_request_duration_seconds_bucket[5m])))')).toEqual([]);
    expect([...outputLabels(parsePromQL('count by (registry) (registry_proxy_upstream_up == 0) / count by (registry) (registry_proxy_upstream_up) > 0.5'), series)]).toEqual(['registry']);
    expect([...outputLabels(parsePromQL('absent(up{job="a", node=~"b"})'), series)]).toEqual(['job']);
  });
});

describe('monitoring component: Grafana dashboard', () => {
  it('parses, with a uid and the variables datasource, registry and node', () => {
    expect(dashboard().uid).toBe('registry-proxy-agent');
    expect(dashboard().title).toBeTruthy();
    const variables = new Map(dashboard().templating.list.map((v) => [v.name, v]));
    expect(variables.get('datasource')).toMatchObject({ type: 'datasource', query: 'prometheus' });
    for (const name of ['registry', 'node']) {
      const variable = variables.get(name);
      expect(variable?.type, name).toBe('query');
      const match = /^label_values\((.*),\s*(\w+)\)$/.exec(variableQuery(variable as Variable));
      expect(match?.[2], `${name} variable query`).toBe(name);
      const selector = parsePromQL(match?.[1] ?? '');
      expect(problems(selector, series, known)).toEqual([]);
      expect(outputLabels(selector, series).has(name)).toBe(true);
    }
  });

  it('every panel has queries on the datasource variable, unique ids and refIds, and a place on the grid', () => {
    expect(panels().length).toBeGreaterThanOrEqual(12);
    const ids = dashboard().panels.map((p) => p.id);
    expect(new Set(ids).size).toBe(ids.length);
    const cells = new Set<string>();
    for (const panel of panels()) {
      expect(panel.targets?.length ?? 0, panel.title).toBeGreaterThan(0);
      expect(panel.datasource?.uid, panel.title).toBe('${datasource}');
      const refIds = (panel.targets ?? []).map((t) => t.refId);
      expect(new Set(refIds).size, panel.title).toBe(refIds.length);
      for (const target of panel.targets ?? []) {
        expect(target.expr.trim(), panel.title).toBeTruthy();
        expect(target.datasource?.uid, panel.title).toBe('${datasource}');
      }
      const { x, y, w, h } = panel.gridPos;
      expect(x + w, panel.title).toBeLessThanOrEqual(24);
      for (let row = y; row < y + h; row += 1) {
        for (let column = x; column < x + w; column += 1) {
          expect(cells.has(`${row},${column}`), `${panel.title} overlaps another panel`).toBe(false);
          cells.add(`${row},${column}`);
        }
      }
    }
  });

  it('every query uses only metrics, labels and label values the agent exports; legends only labels the query keeps', () => {
    for (const target of targets()) {
      const node = parsePromQL(grafanaToPromQL(target.expr));
      expect(problems(node, series, known), `${target.panel}: ${target.expr}`).toEqual([]);
      const labels = outputLabels(node, series);
      for (const [, label] of (target.legendFormat ?? '').matchAll(/\{\{\s*(\w+)\s*\}\}/g)) {
        expect(labels.has(label as string), `${target.panel}: legend {{${label}}} (result labels: ${[...labels].join(', ')})`).toBe(true);
      }
    }
  });

  it('charts every registry_proxy_* metric the agent exports', () => {
    const used = new Set(targets().flatMap((t) => selectors(parsePromQL(grafanaToPromQL(t.expr))).map((s) => s.name)));
    const exported = new AgentMetrics({ processMetrics: false }).registry.getMetricsAsArray().map((m) => m.name);
    const charted = (name: string) => used.has(name) || used.has(`${name}_bucket`) || used.has(`${name}_count`);
    expect(exported.filter((name) => !charted(name))).toEqual([]);
  });

  it('filters by the registry variable wherever a metric has a registry label', () => {
    for (const target of targets()) {
      for (const selector of selectors(parsePromQL(grafanaToPromQL(target.expr)))) {
        if (!selector.name || !series.get(selector.name)?.labels.has('registry') || selector.name === 'up') continue;
        expect(selector.matchers, `${target.panel}: ${selector.name}`).toContainEqual({ label: 'registry', op: '=~', value: '$registry' });
      }
    }
  });
});

// ---------------------------------------------------------------------------------------------------
// promtool: Prometheus' own checks, and the alerts run against synthetic series

/** The labels a scraped agent series has: the monitor's target labels. */
function target(node: string): Record<string, string> {
  return { job: JOB, instance: `10.0.0.${node.replace(/\D/g, '') || '1'}:9402`, namespace: NAMESPACE, pod: `registry-proxy-agent-${node}`, container: 'agent', endpoint: 'metrics', node };
}

function seriesName(metric: string, labels: Record<string, string>): string {
  return `${metric}{${Object.entries(labels).map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(',')}}`;
}

interface AlertTest {
  eval_time: string;
  alertname: string;
  exp_alerts: { exp_labels: Record<string, string> }[];
}

function alertTest(alertname: string, at: string, ...expected: Record<string, string>[]): AlertTest {
  const rule = alerts().find((a) => a.alert === alertname);
  const severity = rule?.labels?.['severity'] ?? '';
  return { eval_time: at, alertname, exp_alerts: expected.map((labels) => ({ exp_labels: { ...labels, severity } })) };
}

describe('monitoring component: promtool', () => {
  it('promtool check rules accepts the rule groups (syntax, templates)', (ctx) => {
    needPromtool(ctx);
    const result = promtool(['check', 'rules', 'rules.yaml'], { 'rules.yaml': { groups: ruleGroups() } });
    expect(result.output).toContain(`SUCCESS: ${alerts().length} rules found`);
    expect(result.ok, result.output).toBe(true);
  });

  it('promtool parses every dashboard query (as recording rules)', (ctx) => {
    needPromtool(ctx);
    const rules = targets().map((t, i) => ({ record: `dashboard:query_${i}`, expr: grafanaToPromQL(t.expr).replaceAll('$registry', '.*').replaceAll('$node', '.*') }));
    const result = promtool(['check', 'rules', 'dashboard.yaml'], { 'dashboard.yaml': { groups: [{ name: 'dashboard', rules }] } });
    expect(result.ok, result.output).toBe(true);
  });

  it('promtool test rules: the alerts fire on the series they are meant for, and only on those', (ctx) => {
    needPromtool(ctx);
    // Annotations are left out: promtool compares rendered annotations verbatim; their templates are
    // checked by `promtool check rules` and the label tests above.
    const stripped = ruleGroups().map((g) => ({ ...g, rules: g.rules.map(({ annotations: _annotations, ...rule }) => rule) }));
    const [n1, n2, n3] = [target('node1'), target('node2'), target('node3')];
    const input = (metric: string, labels: Record<string, string>, values: string) => ({ series: seriesName(metric, labels), values });
    const tests = [
      {
        interval: '1m',
        input_series: [input('up', n1, '1x4 0x30'), input('up', n2, '1x34')],
        alert_rule_test: [
          alertTest('RegistryProxyAgentDown', '7m'),
          alertTest('RegistryProxyAgentDown', '15m', n1),
          alertTest('RegistryProxyAgentMetricsAbsent', '20m'),
        ],
      },
      {
        interval: '1m',
        input_series: [input('registry_proxy_cache_bytes', n1, '0x30')],
        alert_rule_test: [alertTest('RegistryProxyAgentMetricsAbsent', '5m'), alertTest('RegistryProxyAgentMetricsAbsent', '20m', { job: JOB })],
      },
      {
        interval: '1m',
        input_series: [
          input('registry_proxy_upstream_up', { ...n1, registry: 'r1' }, '0x30'),
          input('registry_proxy_upstream_up', { ...n2, registry: 'r1' }, '0x30'),
          input('registry_proxy_upstream_up', { ...n3, registry: 'r1' }, '1x30'),
          input('registry_proxy_upstream_up', { ...n1, registry: 'r2' }, '1x30'),
          input('registry_proxy_upstream_up', { ...n2, registry: 'r2' }, '1x30'),
          input('registry_proxy_upstream_up', { ...n3, registry: 'r2' }, '0x30'),
        ],
        alert_rule_test: [
          alertTest('RegistryProxyUpstreamUnreachableManyNodes', '5m'),
          alertTest('RegistryProxyUpstreamUnreachableManyNodes', '20m', { registry: 'r1' }),
          // r1 is down cluster-wide: no per-node alerts for it.
          alertTest('RegistryProxyUpstreamUnreachable', '20m', { ...n3, registry: 'r2' }),
        ],
      },
      {
        interval: '1m',
        input_series: [
          // Created at the first mismatch (10m), a second one at 12m.
          input('registry_proxy_digest_mismatches_total', { ...n1, where: 'disk' }, '_x10 1 1 2x30'),
          // Initialized at 0 when the agent started, mismatches at 20m and 25m.
          input('registry_proxy_digest_mismatches_total', { ...n2, where: 'upstream' }, '0x19 1x4 2x20'),
          // Initialized at 0, never a mismatch.
          input('registry_proxy_digest_mismatches_total', { ...n3, where: 'disk' }, '0x45'),
        ],
        alert_rule_test: [
          alertTest('RegistryProxyDigestMismatches', '5m'),
          alertTest('RegistryProxyDigestMismatches', '11m', { ...n1, where: 'disk' }),
          alertTest('RegistryProxyDigestMismatches', '13m', { ...n1, where: 'disk' }),
          alertTest('RegistryProxyDigestMismatches', '22m', { ...n1, where: 'disk' }, { ...n2, where: 'upstream' }),
          alertTest('RegistryProxyDigestMismatches', '44m'),
        ],
      },
      {
        interval: '1m',
        input_series: [
          input('registry_proxy_cache_bytes', n1, '99x60'),
          input('registry_proxy_cache_max_bytes', n1, '100x60'),
          input('registry_proxy_cache_evictions_total', n1, '0+2x60'),
          // Full, but not evicting.
          input('registry_proxy_cache_bytes', n2, '99x60'),
          input('registry_proxy_cache_max_bytes', n2, '100x60'),
          input('registry_proxy_cache_evictions_total', n2, '0x60'),
          // Evicting, but not full.
          input('registry_proxy_cache_bytes', n3, '50x60'),
          input('registry_proxy_cache_max_bytes', n3, '100x60'),
          input('registry_proxy_cache_evictions_total', n3, '0+2x60'),
        ],
        // rate() over 30m reaches 2/min only once the window is about half full after the start.
        alert_rule_test: [alertTest('RegistryProxyCacheNearlyFull', '20m'), alertTest('RegistryProxyCacheNearlyFull', '55m', n1)],
      },
      {
        interval: '1m',
        input_series: [
          input('registry_proxy_cache_bypassed_total', n1, '0x9 1x50'),
          input('registry_proxy_cache_bypassed_total', n2, '0x60'),
        ],
        alert_rule_test: [
          alertTest('RegistryProxyCacheBypassed', '8m'),
          alertTest('RegistryProxyCacheBypassed', '20m', n1),
          alertTest('RegistryProxyCacheBypassed', '50m'),
        ],
      },
      {
        interval: '1m',
        input_series: [
          // n1 refuses mirror connections from minute 10 to 30; n2 never; n3 once, briefly.
          input('registry_proxy_connections_refused_total', { ...n1, listener: 'mirror' }, '0x9 0+10x20 200x30'),
          input('registry_proxy_connections_refused_total', { ...n2, listener: 'mirror' }, '0x60'),
          input('registry_proxy_connections_refused_total', { ...n3, listener: 'metrics' }, '0x9 1x50'),
          input('registry_proxy_fills_rejected_total', { ...n1, registry: 'r1' }, '0x9 0+3x20 60x30'),
          input('registry_proxy_fills_rejected_total', { ...n2, registry: 'r1' }, '0x60'),
          input('registry_proxy_destinations_refused_total', { ...n1, registry: 'r1', reason: 'metadata' }, '0x9 1x50'),
          input('registry_proxy_destinations_refused_total', { ...n2, registry: 'r1', reason: 'not_allowed' }, '0x60'),
        ],
        alert_rule_test: [
          alertTest('RegistryProxyConnectionCapReached', '8m'),
          alertTest('RegistryProxyConnectionCapReached', '13m'),
          alertTest('RegistryProxyConnectionCapReached', '16m', { ...n1, listener: 'mirror' }, { ...n3, listener: 'metrics' }),
          alertTest('RegistryProxyConnectionCapReached', '22m', { ...n1, listener: 'mirror' }),
          alertTest('RegistryProxyConnectionCapReached', '50m'),
          alertTest('RegistryProxyDownloadQueueFull', '20m', { ...n1, registry: 'r1' }),
          alertTest('RegistryProxyDownloadQueueFull', '50m'),
          alertTest('RegistryProxyDestinationRefused', '8m'),
          alertTest('RegistryProxyDestinationRefused', '11m', { ...n1, registry: 'r1', reason: 'metadata' }),
          alertTest('RegistryProxyDestinationRefused', '50m'),
        ],
      },
      {
        interval: '1m',
        input_series: [
          input('registry_proxy_containerd_config_state', { ...n1, state: 'config_path_unset' }, '1x30'),
          input('registry_proxy_containerd_config_state', { ...n1, state: 'ok' }, '0x30'),
          input('registry_proxy_containerd_config_state', { ...n2, state: 'config_path_unset' }, '0x30'),
          input('registry_proxy_containerd_config_state', { ...n2, state: 'ok' }, '1x30'),
          input('registry_proxy_hosts_toml_state', { ...n1, registry: 'r1', state: 'admin_file_invalid' }, '1x30'),
          input('registry_proxy_hosts_toml_state', { ...n1, registry: 'r1', state: 'written' }, '0x30'),
          input('registry_proxy_hosts_toml_state', { ...n2, registry: 'r1', state: 'written' }, '1x30'),
          input('registry_proxy_hosts_toml_state', { ...n2, registry: 'r1', state: 'error' }, '0x30'),
        ],
        alert_rule_test: [
          alertTest('RegistryProxyContainerdNotWired', '10m'),
          alertTest('RegistryProxyContainerdNotWired', '20m', { ...n1, state: 'config_path_unset' }),
          alertTest('RegistryProxyHostsTomlNotWritten', '20m', { ...n1, registry: 'r1', state: 'admin_file_invalid' }),
        ],
      },
      {
        interval: '1m',
        input_series: [
          input('registry_proxy_upstream_errors_total', { ...n1, registry: 'r1', cause: 'cp_no_cloud_connector' }, '0+5x30'),
          input('registry_proxy_upstream_errors_total', { ...n2, registry: 'r1', cause: 'cp_no_cloud_connector' }, '0+5x30'),
          input('registry_proxy_upstream_errors_total', { ...n1, registry: 'r2', cause: 'unreachable' }, '0+5x30'),
          input('registry_proxy_requests_total', { ...n1, registry: 'r1', kind: 'blob', method: 'GET', status_class: '5xx', cache: 'none' }, '0+5x30'),
          input('registry_proxy_requests_total', { ...n1, registry: 'r1', kind: 'blob', method: 'GET', status_class: '2xx', cache: 'hit' }, '0+10x30'),
          input('registry_proxy_requests_total', { ...n1, registry: 'r2', kind: 'blob', method: 'GET', status_class: '5xx', cache: 'none' }, '0+1x30'),
          input('registry_proxy_requests_total', { ...n1, registry: 'r2', kind: 'blob', method: 'GET', status_class: '2xx', cache: 'hit' }, '0+100x30'),
        ],
        alert_rule_test: [
          alertTest('RegistryProxyConnectivityProxyErrors', '5m'),
          alertTest('RegistryProxyConnectivityProxyErrors', '20m', { registry: 'r1', cause: 'cp_no_cloud_connector' }),
          alertTest('RegistryProxyPullErrors', '25m', { registry: 'r1' }),
        ],
      },
      {
        interval: '1m',
        input_series: [
          // The Cloud Connector does not expose r1's virtual host (403): its own cause, from 10m on.
          input('registry_proxy_upstream_errors_total', { ...n1, registry: 'r1', cause: 'cp_denied' }, '0x10 0+2x30'),
          // Connection refused on the direct route: the probe alerts' business, not the proxy's.
          input('registry_proxy_upstream_errors_total', { ...n1, registry: 'r2', cause: 'refused' }, '0+5x40'),
          // r2's bodies break off steadily on two nodes; r3's once in a while on one.
          input('registry_proxy_upstream_errors_total', { ...n1, registry: 'r2', cause: 'body_cut' }, '0+1x40'),
          input('registry_proxy_upstream_errors_total', { ...n2, registry: 'r2', cause: 'body_cut' }, '0+1x40'),
          input('registry_proxy_upstream_errors_total', { ...n1, registry: 'r3', cause: 'body_timeout' }, '0x10 1x30'),
        ],
        alert_rule_test: [
          alertTest('RegistryProxyConnectivityProxyErrors', '8m'),
          alertTest('RegistryProxyConnectivityProxyErrors', '30m', { registry: 'r1', cause: 'cp_denied' }),
          alertTest('RegistryProxyUpstreamDownloadsBreaking', '10m'),
          alertTest('RegistryProxyUpstreamDownloadsBreaking', '35m', { registry: 'r2', cause: 'body_cut' }),
        ],
      },
    ];
    const result = promtool(['test', 'rules', 'tests.yaml'], {
      'rules.yaml': { groups: stripped },
      'tests.yaml': { rule_files: ['rules.yaml'], evaluation_interval: '1m', tests },
    });
    expect(result.ok, result.output).toBe(true);
  });
});

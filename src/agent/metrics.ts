/**
 * Prometheus metrics of one agent, in its own registry (several agents may share a process in tests
 * and benchmarks), served on a local port for a scraper or `curl localhost:9464/metrics`.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { ErrorCodes, SetokimError } from '../errors.js';
import { TASKS, type CacheStats } from '../pipeline/types.js';
import type { TegraSample } from './tegrastats.js';

/** The pipeline serving now and its cache counters (undefined: a pipeline without caches). */
export type CacheSource = () => { pipeline: object; stats: CacheStats | undefined };

/**
 * A counter that follows a running total kept elsewhere (the pipeline's cache counters): each
 * scrape adds what the total grew by. A new pipeline (after an update) starts its totals at 0.
 */
type Source = () => CacheSource | undefined;
type Pick = (s: CacheStats) => number;

function followingCounter(registry: Registry, name: string, help: string, source: Source, pick: Pick): Counter {
  let last = 0;
  let from: object | undefined;
  return new Counter({
    name,
    help,
    registers: [registry],
    collect() {
      const now = source()?.();
      if (!now?.stats) return;
      if (now.pipeline !== from) [from, last] = [now.pipeline, 0];
      const value = pick(now.stats);
      if (value > last) this.inc(value - last);
      last = value;
    },
  });
}

function followingGauge(registry: Registry, name: string, help: string, source: Source, pick: Pick): Gauge {
  return new Gauge({
    name,
    help,
    registers: [registry],
    collect() {
      const stats = source()?.().stats;
      if (stats) this.set(pick(stats));
    },
  });
}

/**
 * Device health gauges (src/agent/health.ts), registered only once a Jetson's tegrastats printed a
 * line. Every one is labelled, so a field a line does not print is absent rather than 0 (prom-client
 * shows an unlabelled gauge as 0 until set), and each line replaces the previous one whole.
 */
export class DeviceMetrics {
  readonly memory: Gauge;
  readonly load: Gauge;
  readonly frequency: Gauge;
  readonly cpuLoad: Gauge;
  readonly temperature: Gauge;
  readonly power: Gauge;
  readonly sampled: Gauge;
  readonly queryEnergy: Histogram;
  private readonly all: Gauge[];

  constructor(registry: Registry) {
    const gauge = (name: string, help: string, label: string) =>
      new Gauge({ name, help, labelNames: [label], registers: [registry] });
    this.memory = gauge(
      'setokim_device_memory_bytes',
      'RAM (shared by CPU and GPU) and swap: ram_used, ram_total, swap_used, swap_total (tegrastats RAM, SWAP)',
      'kind',
    );
    this.load = gauge(
      'setokim_device_load_ratio',
      'Load at the current clock, 0..1: gpu (tegrastats GR3D_FREQ), emc (external memory controller, EMC_FREQ)',
      'unit',
    );
    this.frequency = gauge('setokim_device_frequency_hertz', 'Clock of gpu and emc (GR3D_FREQ, EMC_FREQ)', 'unit');
    this.cpuLoad = gauge(
      'setokim_device_cpu_load_ratio',
      'Load of each online CPU core, 0..1 (tegrastats CPU; cores that are off are left out)',
      'cpu',
    );
    this.temperature = gauge(
      'setokim_device_temperature_celsius',
      'Thermal sensors (tegrastats name@C; sensors that are off are left out)',
      'sensor',
    );
    this.power = gauge('setokim_device_power_watts', 'Power rails, instantaneous (tegrastats VDD_IN etc.)', 'rail');
    this.sampled = gauge('setokim_device_health_sampled_seconds', 'Unix time of the last health reading', 'source');
    this.all = [this.memory, this.load, this.frequency, this.cpuLoad, this.temperature, this.power, this.sampled];
    this.queryEnergy = new Histogram({
      name: 'setokim_query_energy_joules',
      help: 'Board energy while a query ran (the energy rail integrated over the query; overlapping queries share it)',
      buckets: [0.1, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000],
      registers: [registry],
    });
  }

  update(s: TegraSample, at: number): void {
    this.clear();
    const mib = 2 ** 20;
    const set = (g: Gauge, label: Record<string, string>, v: number | undefined, scale: number) =>
      v !== undefined && g.set(label, v * scale);
    set(this.memory, { kind: 'ram_used' }, s.ramUsedMib, mib);
    set(this.memory, { kind: 'ram_total' }, s.ramTotalMib, mib);
    set(this.memory, { kind: 'swap_used' }, s.swapUsedMib, mib);
    set(this.memory, { kind: 'swap_total' }, s.swapTotalMib, mib);
    set(this.load, { unit: 'gpu' }, s.gpuLoadPct, 0.01);
    set(this.load, { unit: 'emc' }, s.emcLoadPct, 0.01);
    set(this.frequency, { unit: 'gpu' }, s.gpuFreqMhz, 1e6);
    set(this.frequency, { unit: 'emc' }, s.emcFreqMhz, 1e6);
    s.cpus.forEach((c, i) => c && this.cpuLoad.set({ cpu: String(i) }, c.loadPct / 100));
    for (const [sensor, c] of Object.entries(s.temps)) this.temperature.set({ sensor }, c);
    for (const [rail, r] of Object.entries(s.rails)) this.power.set({ rail }, r.mW / 1000);
    this.sampled.set({ source: 'tegrastats' }, at / 1000);
  }

  /** No reading (tegrastats stopped): nothing keeps showing the last one as if it were current. */
  clear(): void {
    for (const g of this.all) g.reset();
  }
}

export class AgentMetrics {
  readonly registry = new Registry();
  readonly queries = new Counter({
    name: 'setokim_queries_total',
    help: 'Queries received, by task',
    labelNames: ['task'],
    registers: [this.registry],
  });
  readonly answered = new Counter({
    name: 'setokim_queries_answered_total',
    help: 'Queries that ended with done',
    registers: [this.registry],
  });
  readonly errors = new Counter({
    name: 'setokim_errors_total',
    help: 'Error replies and dropped messages, by code',
    labelNames: ['code'],
    registers: [this.registry],
  });
  readonly unaddressable = new Counter({
    name: 'setokim_unaddressable_messages_total',
    help: 'Broken messages that carried no reply address, so no error reply could be sent',
    registers: [this.registry],
  });
  readonly duplicates = new Counter({
    name: 'setokim_duplicate_queries_total',
    help: 'Redelivered query ids, dropped (answered once)',
    registers: [this.registry],
  });
  readonly queueDepth = new Gauge({
    name: 'setokim_queue_depth',
    help: 'Queries waiting for a slot',
    registers: [this.registry],
  });
  readonly inFlight = new Gauge({
    name: 'setokim_in_flight',
    help: 'Queries running in the pipeline',
    registers: [this.registry],
  });
  readonly connected = new Gauge({
    name: 'setokim_broker_connected',
    help: '1 while connected to the broker',
    registers: [this.registry],
  });
  readonly stageSeconds = new Histogram({
    name: 'setokim_stage_seconds',
    help: 'Time per pipeline stage',
    labelNames: ['stage'],
    buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    registers: [this.registry],
  });
  readonly querySeconds = new Histogram({
    name: 'setokim_query_seconds',
    help: 'Time from receipt to the last reply',
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
    registers: [this.registry],
  });
  readonly tokensPerSecond = new Histogram({
    name: 'setokim_generation_tokens_per_second',
    help: 'Generated tokens per second of decode time, per query',
    buckets: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000],
    registers: [this.registry],
  });
  private caches?: CacheSource;
  private server?: Server;
  private deviceMetrics?: DeviceMetrics;

  /** The device health gauges, registered on first use (a Jetson's first tegrastats line). */
  device(): DeviceMetrics {
    this.deviceMetrics ??= new DeviceMetrics(this.registry);
    return this.deviceMetrics;
  }

  /** setokim_queries_total's children by task, made once (labels() hashes its argument on every call). */
  private readonly byTask = new Map<string, { inc(): void }>();

  /** The query counter of a task ("unknown" for anything but the five). */
  queryOf(task: string): { inc(): void } {
    const known = (TASKS as readonly string[]).includes(task) ? task : 'unknown';
    let child = this.byTask.get(known);
    if (!child) this.byTask.set(known, (child = this.queries.labels({ task: known })));
    return child;
  }

  constructor() {
    // The vision-token, prefix and conversation caches of the pipeline serving (docs/MQTT.md, Metrics).
    const src = () => this.caches;
    const c = (name: string, help: string, pick: Pick) => followingCounter(this.registry, name, help, src, pick);
    const g = (name: string, help: string, pick: Pick) => followingGauge(this.registry, name, help, src, pick);
    c('setokim_vision_cache_hits_total', 'Queries whose image tokens came from the vision cache', (s) => s.vision.hits);
    c('setokim_vision_cache_misses_total', 'Queries whose image went through the vision', (s) => s.vision.misses);
    g('setokim_vision_cache_bytes', 'Bytes held by the vision-token cache', (s) => s.vision.bytes);
    c('setokim_prefix_cache_hits_total', 'Prompts whose prefix KV rows came from the cache', (s) => s.prefix.hits);
    c('setokim_prefix_cache_misses_total', 'Prompts whose prefix was prefilled', (s) => s.prefix.misses);
    g('setokim_prefix_cache_bytes', 'KV bytes held by cached prompt prefixes', (s) => s.prefix.bytes);
    g('setokim_conversations', 'Conversations held', (s) => s.conversations.active);
    g('setokim_conversation_bytes', 'KV bytes held by conversations', (s) => s.conversations.bytes);
    const expired = (s: CacheStats) => s.conversations.expired;
    c('setokim_conversations_expired_total', 'Conversations ended idle or over the count', expired);
    c('setokim_conversations_evicted_total', 'Conversations ended for memory', (s) => s.conversations.evicted);
    c('setokim_kv_cache_evictions_total', 'Cache holds taken back for queries', (s) => s.kv.evictions);
    g('setokim_kv_budget_used_bytes', 'KV-cache bytes held by queries and caches', (s) => s.kv.usedBytes);
  }

  /** Where the cache metrics read from (the agent's serving pipeline, which an update replaces). */
  trackCaches(source: CacheSource): void {
    this.caches = source;
  }

  /** Serves /metrics on host:port (port 0 = a free port); resolves with the bound port. */
  async listen(port: number, host = '127.0.0.1'): Promise<number> {
    const server = createServer((req, res) => {
      if (req.url !== '/metrics') {
        res.writeHead(404).end('try /metrics\n');
        return;
      }
      this.registry.metrics().then(
        (body) => res.writeHead(200, { 'content-type': this.registry.contentType }).end(body),
        (err: Error) => res.writeHead(500).end(`${err.message}\n`),
      );
    });
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err: NodeJS.ErrnoException) =>
        reject(
          new SetokimError(
            ErrorCodes.BAD_CONFIG,
            `cannot serve metrics on ${host}:${port} (${err.code ?? err.message}); choose another metrics.port (--metrics-port, 0 = any free port) or turn metrics off (--no-metrics)`,
          ),
        ),
      );
      server.listen(port, host, () => resolve());
    });
    return (server.address() as AddressInfo).port;
  }

  async close(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}

/**
 * Prometheus metrics of one agent, in its own registry (several agents may share a process in tests
 * and benchmarks), served on a local port for a scraper or `curl localhost:9464/metrics`.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { ErrorCodes, SetokimError } from '../errors.js';
import type { CacheStats } from '../pipeline/types.js';

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

export class AgentMetrics {
  readonly registry = new Registry();
  readonly queries = new Counter({ name: 'setokim_queries_total', help: 'Queries received, by task', labelNames: ['task'], registers: [this.registry] });
  readonly answered = new Counter({ name: 'setokim_queries_answered_total', help: 'Queries that ended with done', registers: [this.registry] });
  readonly errors = new Counter({ name: 'setokim_errors_total', help: 'Error replies and dropped messages, by code', labelNames: ['code'], registers: [this.registry] });
  readonly unaddressable = new Counter({
    name: 'setokim_unaddressable_messages_total',
    help: 'Broken messages that carried no reply address, so no error reply could be sent',
    registers: [this.registry],
  });
  readonly duplicates = new Counter({ name: 'setokim_duplicate_queries_total', help: 'Redelivered query ids, dropped (answered once)', registers: [this.registry] });
  readonly queueDepth = new Gauge({ name: 'setokim_queue_depth', help: 'Queries waiting for a slot', registers: [this.registry] });
  readonly inFlight = new Gauge({ name: 'setokim_in_flight', help: 'Queries running in the pipeline', registers: [this.registry] });
  readonly connected = new Gauge({ name: 'setokim_broker_connected', help: '1 while connected to the broker', registers: [this.registry] });
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

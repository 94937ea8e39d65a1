/**
 * Prometheus metrics of one agent, in its own registry (several agents may share a process in tests
 * and benchmarks), served on a local port for a scraper or `curl localhost:9464/metrics`.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { ErrorCodes, SetokimError } from '../errors.js';
import { TASKS } from '../pipeline/types.js';

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
  private server?: Server;
  /** setokim_queries_total's children by task, made once (labels() hashes its argument on every call). */
  private readonly byTask = new Map<string, { inc(): void }>();

  /** The query counter of a task ("unknown" for anything but the five). */
  queryOf(task: string): { inc(): void } {
    const known = (TASKS as readonly string[]).includes(task) ? task : 'unknown';
    let child = this.byTask.get(known);
    if (!child) this.byTask.set(known, (child = this.queries.labels({ task: known })));
    return child;
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

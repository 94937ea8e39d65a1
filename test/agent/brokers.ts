/** The brokers the agent tests run against, both on free ports: a real mosquitto and aedes. */
import { startEmbeddedBroker } from '../../src/agent/broker.js';
import { parseAgentConfig, type AgentConfig, type AgentConfigInput } from '../../src/agent/config.js';
import type { ReplyEvent } from '../../src/agent/codec.js';
import { mosquittoPath, startMosquitto } from '../helpers/mosquitto.js';

export type BrokerKind = 'mosquitto' | 'aedes';

export interface TestBroker {
  kind: BrokerKind;
  url: string;
  protocolVersion: 4 | 5;
  shared: boolean;
  close(): Promise<void>;
  restart?(): Promise<void>;
}

export const brokerKinds: BrokerKind[] = mosquittoPath() ? ['mosquitto', 'aedes'] : ['aedes'];

export async function startBroker(kind: BrokerKind): Promise<TestBroker> {
  if (kind === 'mosquitto') {
    const m = await startMosquitto();
    return { kind, url: m.url, protocolVersion: 5, shared: true, close: () => m.stop(), restart: () => m.restart() };
  }
  const b = await startEmbeddedBroker();
  return { kind, url: b.url, protocolVersion: 4, shared: false, close: () => b.close() };
}

/** What a test overrides: any top-level group, the broker's fields one by one (the URL is the test broker's). */
export type TestConfigExtra = Partial<Omit<AgentConfigInput, 'broker'>> & {
  broker?: Partial<AgentConfigInput['broker']>;
};

export function testConfig(broker: TestBroker, device: string, extra: TestConfigExtra = {}): AgentConfig {
  return parseAgentConfig({
    fleet: 'test',
    device,
    models: 'unused-by-the-stub',
    fleetSubscription: broker.shared ? 'shared' : 'plain',
    metrics: { port: 0 },
    ...extra,
    broker: {
      url: broker.url,
      protocolVersion: broker.protocolVersion,
      reconnectMinMs: 50,
      reconnectMaxMs: 400,
      ...extra.broker,
    },
    limits: { queueSize: 16, concurrency: 2, maxImageBytes: 64 * 1024, ...extra.limits },
  });
}

/** Collects a reply stream into an array (throws what the stream throws). */
export async function collect<T>(stream: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const e of stream) out.push(e);
  return out;
}

/** How a reply stream ended: the error code, or the type of its last event. */
export function outcome(events: ReadonlyArray<ReplyEvent>): string {
  const last = events.at(-1);
  if (!last) return 'nothing';
  return last.type === 'error' ? last.code : last.type;
}

/**
 * What bench/agent.ts measures against, in its own process when it runs apart from the client (as
 * on a device): an agent with the empty pipeline, or a bare MQTT echo that republishes each request
 * to its Response Topic as one message, or as two (accepted and done are two messages). Run by the
 * bench: `node --import tsx bench/responder.ts agent|echo URL PROTOCOL DEVICE`; it says "ready" on
 * its IPC channel and stops on "stop".
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { pathToFileURL } from 'node:url';
import { connect, type MqttClient } from 'mqtt';
import { Agent, noDelay } from '../src/agent/agent.js';
import { parseAgentConfig } from '../src/agent/config.js';
import { decodeQuery, encodeReply } from '../src/agent/codec.js';
import type { Pipeline, PipelineEvent, QueryRequest } from '../src/pipeline/types.js';

/** The agent's overhead only: no model, the answer is "accepted, done" (optionally after a wait). */
export class EmptyPipeline implements Pipeline {
  readonly info = { modelSetId: 'empty', backend: 'none', maxTokens: 1, maxContext: 1 };
  constructor(private readonly serviceMs = 0) {}
  async *run(req: QueryRequest): AsyncIterable<PipelineEvent> {
    yield { type: 'accepted', id: req.id };
    if (this.serviceMs) await sleep(this.serviceMs);
    yield {
      type: 'done',
      id: req.id,
      visionTokens: 0,
      promptTokens: 0,
      generatedTokens: 0,
      finishReason: 'stop',
      stages: {},
      totalMs: this.serviceMs,
    };
  }
  async close(): Promise<void> {}
}

export const ECHO_TOPIC = 'bench/echo';
export const ECHO2_TOPIC = 'bench/echo2';
/** The 2-message echo with the wire format at both ends: the query decoded and checked, the replies encoded. */
export const CODEC_TOPIC = 'bench/codec-echo';
/** Where the echo answers an MQTT 3.1.1 request (no Response Topic there). */
export const ECHO_REPLY_TOPIC = 'setokim/v1/replies/bench-echo';

export function agentConfig(url: string, protocolVersion: 4 | 5, device: string, shared: boolean, concurrency: number) {
  return parseAgentConfig({
    fleet: 'bench',
    device,
    models: 'none',
    fleetSubscription: shared ? 'shared' : 'plain',
    broker: { url, protocolVersion },
    limits: { concurrency, queueSize: 256, maxImageBytes: 1 << 20 },
    metrics: { enabled: false },
  });
}

/**
 * A bare echo: each request on ECHO_TOPIC comes back as it is; on ECHO2_TOPIC as two messages the
 * size of an agent's accepted and done, no decoding; on CODEC_TOPIC as the two replies an agent
 * sends, after decoding and checking the query as the agent does (decodeQuery) and encoding each
 * reply for its id (encodeReply): what the protocol and its wire format cost with no agent around them.
 */
export async function startEcho(url: string, protocolVersion: 4 | 5): Promise<MqttClient> {
  const echo = connect(url, { protocolVersion, clientId: `echo-${process.pid}` });
  await new Promise((r) => echo.once('connect', r));
  noDelay(echo);
  await echo.subscribeAsync([ECHO_TOPIC, ECHO2_TOPIC, CODEC_TOPIC], { qos: 1 });
  const accepted = Buffer.from(encodeReply({ type: 'accepted', id: 'x'.repeat(36) }, { seq: 0, device: 'rt' }));
  const doneEvent = {
    type: 'done',
    id: 'x'.repeat(36),
    visionTokens: 0,
    promptTokens: 0,
    generatedTokens: 0,
    finishReason: 'stop',
    stages: {},
    totalMs: 0,
  } as const;
  const done = Buffer.from(encodeReply(doneEvent, { seq: 1, device: 'rt' }));
  echo.on('message', (topic, payload, packet) => {
    const to = protocolVersion === 5 ? packet.properties?.responseTopic : ECHO_REPLY_TOPIC;
    const opts = {
      qos: 1 as const,
      ...(protocolVersion === 5 ? { properties: { correlationData: packet.properties?.correlationData } } : {}),
    };
    if (topic === ECHO_TOPIC) echo.publish(to!, payload, opts);
    else if (topic === ECHO2_TOPIC) for (const m of [accepted, done]) echo.publish(to!, m, opts);
    else {
      const q = decodeQuery(payload);
      if (!q.ok) throw q.error;
      const id = q.query.id;
      echo.publish(to!, Buffer.from(encodeReply({ type: 'accepted', id }, { seq: 0, device: 'rt' })), opts);
      echo.publish(to!, Buffer.from(encodeReply({ ...doneEvent, id }, { seq: 1, device: 'rt' })), opts);
    }
  });
  return echo;
}

async function serve(): Promise<void> {
  const [what, url, protocol, device] = process.argv.slice(2);
  const protocolVersion = Number(protocol) as 4 | 5;
  let stop: () => Promise<void>;
  if (what === 'agent') {
    const agent = new Agent({
      config: agentConfig(url!, protocolVersion, device!, false, 1),
      pipeline: new EmptyPipeline(),
    });
    await agent.start();
    stop = () => agent.stop(0);
  } else {
    const echo = await startEcho(url!, protocolVersion);
    stop = () => echo.endAsync();
  }
  process.on('message', (m) => m === 'stop' && void stop().then(() => process.exit(0)));
  process.send!('ready');
}

if (import.meta.url === pathToFileURL(process.argv[1]!).href) await serve();

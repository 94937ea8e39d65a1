/** The query client on its own: a malformed retained status must not break it. */
import t from 'tap';
import { startEmbeddedBroker } from '../../src/agent/broker.js';
import { QueryClient } from '../../src/agent/client.js';
import { encodeStatus } from '../../src/agent/codec.js';

t.test('status() ignores a payload that is not a Status and still reads the next one', async (t) => {
  const broker = await startEmbeddedBroker();
  const client = await QueryClient.connect({ url: broker.url, protocolVersion: 4 });
  t.teardown(async () => {
    await client.close();
    await broker.close();
  });
  const topic = 'setokim/v1/f/d/status';
  await client.mqtt.publishAsync(topic, Buffer.from([0xff, 0xff, 0xff]), { qos: 1, retain: true });
  t.equal(await client.status('f', 'd', 300), undefined, 'no status from garbage');
  const good = {
    fleet: 'f',
    device: 'd',
    online: true,
    modelSetId: 'm',
    backend: 'b',
    tasks: ['ask'],
    queueDepth: 0,
    inFlight: 0,
    queueSize: 1,
    concurrency: 1,
    maxImageBytes: 1024,
    maxTokens: 8,
    maxContext: 64,
    updatedUnixMs: 1,
    version: 'v',
    streams: 0,
    maxStreams: 0,
  };
  await client.mqtt.publishAsync(topic, Buffer.from(encodeStatus(good)), { qos: 1, retain: true });
  t.equal((await client.status('f', 'd', 2000))?.modelSetId, 'm', 'the client still works');
});

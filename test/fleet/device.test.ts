/**
 * serveUpdates when the broker refuses the job topic: the start rejects BROKER_REFUSED and the
 * client keeps the listeners it had, so a retry handles each job once. On aedes (whose
 * authorizeSubscribe refuses, then grants) and on mosquitto with a dynamic-security ACL.
 */
import { createServer, type AddressInfo, type Socket } from 'node:net';
import path from 'node:path';
import { Aedes } from 'aedes';
import { connectAsync, type MqttClient } from 'mqtt';
import t from 'tap';
import {
  generateKeys,
  loadPublicKey,
  serveUpdates,
  UpdateHandler,
  updateTopic,
  type UpdateEvent,
} from '../../src/fleet/index.js';
import { topicLink } from '../../src/mqtt/subscriptions.js';
import { dynsecPluginPath, mosquittoPath, startMosquitto } from '../helpers/mosquitto.js';

const work = t.testdir({});
const keys = await generateKeys(path.join(work, 'keys'));
const pub = await loadPublicKey(keys.publicPath);
const handler = new UpdateHandler({ store: path.join(work, 'store'), pubkey: pub });

const counts = (c: MqttClient) => ({ message: c.listenerCount('message'), connect: c.listenerCount('connect') });

/** aedes on port 0 whose authorizeSubscribe refuses every SUBSCRIBE while `refuse.on`. */
async function refusingAedes() {
  const refuse = { on: true };
  const aedes = await Aedes.createBroker({
    authorizeSubscribe: (_client, sub, done) => done(null, refuse.on ? null : sub),
  });
  const sockets = new Set<Socket>();
  const server = createServer((s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    aedes.handle(s);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `mqtt://127.0.0.1:${(server.address() as AddressInfo).port}`,
    refuse,
    close: async () => {
      await new Promise<void>((r) => aedes.close(() => r()));
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

t.test(
  'aedes: a refused first subscribe leaves the listeners as they were; the retry handles each job once',
  async (t) => {
    const broker = await refusingAedes();
    t.teardown(broker.close);
    const c = await connectAsync(broker.url, { clientId: 'dev-a' });
    const op = await connectAsync(broker.url, { clientId: 'op-a' });
    t.teardown(() => Promise.all([c.endAsync(), op.endAsync()]));
    const before = counts(c);

    const firstEvents: UpdateEvent[] = [];
    const refused = await serveUpdates(topicLink(c), handler, {
      fleet: 'f',
      device: 'a',
      onEvent: (e) => void firstEvents.push(e),
    }).then(
      () => undefined,
      (e: unknown) => e,
    );
    t.match(refused, {
      code: 'BROKER_REFUSED',
      message:
        /refused the subscription to setokim\/v1\/f\/a\/update \(Unspecified error, reason code 0x80\); allow this client to subscribe to it in the broker's ACL/,
    });
    t.same(counts(c), before, 'no message or connect listener left behind');

    broker.refuse.on = false;
    let answered!: (e: UpdateEvent) => void;
    const answer = new Promise<UpdateEvent>((r) => (answered = r));
    const served = await serveUpdates(topicLink(c), handler, { fleet: 'f', device: 'a', onEvent: answered });
    t.same(counts(c), { message: before.message + 1, connect: before.connect + 1 }, 'the retry attached one of each');
    await op.publishAsync(updateTopic('f', 'a'), '{"jobId":"j","url":5}', { qos: 1 });
    t.match(await answer, { jobId: 'j', state: 'failed', code: 'BAD_MESSAGE' });
    // A leaked listener of the refused start would sit before the retry's and run first on the same message.
    t.same(firstEvents, [], 'the refused start handled nothing');
    await served.stop();
    t.same(counts(c), before, 'stop() detaches them');
  },
);

const acl = (allow: string[]) => ({
  defaultACLAccess: { publishClientSend: true, publishClientReceive: true, subscribe: false, unsubscribe: true },
  clients: [],
  groups: [{ groupname: 'anonymous', roles: [{ rolename: 'device' }], clients: [] }],
  roles: [
    {
      rolename: 'device',
      acls: allow.map((topic) => ({ acltype: 'subscribePattern', topic, priority: 0, allow: true })),
    },
  ],
  anonymousGroup: 'anonymous',
});

if (!mosquittoPath() || !dynsecPluginPath()) {
  t.test(
    'mosquitto: a refused subscription',
    { skip: 'needs mosquitto and its dynamic-security plugin (apt-get install -y mosquitto)' },
    async () => undefined,
  );
} else {
  t.test(
    'mosquitto: an ACL that refuses the job topic rejects BROKER_REFUSED (0x87) and leaves the listeners as they were',
    async (t) => {
      const m = await startMosquitto({ dynsec: acl(['setokim/v1/f/other/#']) });
      t.teardown(() => m.stop());
      const c = await connectAsync(m.url, { clientId: 'dev-m', protocolVersion: 5 });
      t.teardown(() => c.endAsync());
      const before = counts(c);
      await t.rejects(serveUpdates(topicLink(c), handler, { fleet: 'f', device: 'a' }), {
        code: 'BROKER_REFUSED',
        message: /setokim\/v1\/f\/a\/update \(Not authorized, reason code 0x87\)/,
      });
      t.same(counts(c), before);
      // The ACL's own topic is granted on the same connection: the refusal above was the ACL's.
      const served = await serveUpdates(topicLink(c), handler, { fleet: 'f', device: 'other' });
      t.same(counts(c), { message: before.message + 1, connect: before.connect + 1 });
      await served.stop();
      t.same(counts(c), before);
    },
  );
}

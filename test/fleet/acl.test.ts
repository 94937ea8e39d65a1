/**
 * The broker ACL of docs/FLEET.md ("Broker ACL"), as written there: mosquitto starts with the
 * dynamic-security block read from the doc (each client given a password), and an agent with
 * updates serves under the `device-cam1` role while the operator, the other device and an
 * anonymous client try what the ACL must allow and refuse.
 */
import { generateKeyPairSync, pbkdf2Sync, randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { connectAsync, type MqttClient } from 'mqtt';
import t from 'tap';
import { Agent } from '../../src/agent/agent.js';
import { parseAgentConfig } from '../../src/agent/config.js';
import { startUpdates } from '../../src/agent/updates.js';
import { updateStateTopic, updateTopic, type UpdateEvent } from '../../src/fleet/index.js';
import { StubPipeline } from '../agent/stub-pipeline.js';
import { dynsecPluginPath, mosquittoPath, startMosquitto } from '../helpers/mosquitto.js';

/** The json block the doc marks for this test. */
function aclOfDoc(): { clients: Array<Record<string, unknown>> } & Record<string, unknown> {
  const doc = readFileSync(new URL('../../docs/FLEET.md', import.meta.url), 'utf8');
  const m = /<!-- dynsec-acl:[^\n]*-->\n```json\n([\s\S]*?)\n```/.exec(doc);
  if (!m) throw new Error('docs/FLEET.md has no dynsec-acl json block');
  return JSON.parse(m[1]!);
}

/** A dynamic-security client's password entry (PBKDF2-SHA512, as mosquitto_ctrl writes it). */
function password(secret: string) {
  const salt = randomBytes(12);
  const iterations = 101;
  return {
    password: pbkdf2Sync(secret, salt, iterations, 64, 'sha512').toString('base64'),
    salt: salt.toString('base64'),
    iterations,
  };
}

if (!mosquittoPath() || !dynsecPluginPath()) {
  t.test(
    'the ACL of docs/FLEET.md',
    { skip: 'needs mosquitto and its dynamic-security plugin (apt-get install -y mosquitto)' },
    async () => undefined,
  );
} else {
  t.test(
    'the ACL of docs/FLEET.md: only the operator starts updates, each device publishes only its own states',
    async (t) => {
      const acl = aclOfDoc();
      for (const c of acl.clients) Object.assign(c, password(`pw-${c.username as string}`));
      const m = await startMosquitto({ dynsec: acl });
      t.teardown(() => m.stop());
      const work = t.testdir({});
      const pub = path.join(work, 'fleet.pub.pem');
      writeFileSync(pub, generateKeyPairSync('ed25519').publicKey.export({ type: 'spki', format: 'pem' }));

      // An agent with updates under the device-cam1 role: start() fails if the role misses a topic it needs.
      const config = parseAgentConfig({
        fleet: 'site1',
        device: 'cam1',
        models: 'unused-by-the-stub',
        metrics: { enabled: false },
        updates: { store: path.join(work, 'store'), pubkey: pub },
        broker: { url: m.url, username: 'cam1', password: 'pw-cam1', reconnectMinMs: 50 },
      });
      const agent = new Agent({ config, pipeline: new StubPipeline() });
      await agent.start();
      const updates = await startUpdates(agent, {
        open: () => Promise.reject(new Error('unused')),
        log: () => undefined,
      });
      t.teardown(async () => {
        await updates.stop();
        await agent.stop(0);
      });

      const clients: MqttClient[] = [];
      t.teardown(() => Promise.all(clients.map((c) => c.endAsync(true))));
      const as = async (username?: string) => {
        const c = await connectAsync(m.url, {
          protocolVersion: 5,
          ...(username ? { username, password: `pw-${username}` } : {}),
        });
        clients.push(c);
        return c;
      };
      const operator = await as('operator');
      const states: UpdateEvent[] = [];
      let heard!: () => void;
      const first = new Promise<void>((r) => (heard = r));
      operator.on('message', (_topic, payload) => {
        states.push(JSON.parse(payload.toString()) as UpdateEvent);
        heard();
      });
      await operator.subscribeAsync('setokim/v1/site1/+/update/state', { qos: 1 });

      // cam2 and an anonymous client cannot start an update on cam1: the broker refuses the PUBLISH.
      const cam2 = await as('cam2');
      const anonymous = await as();
      const job = (jobId: string) =>
        JSON.stringify({ jobId, url: 'https://updates.example/bundles/r2.bundle', sha256: 'a'.repeat(64), size: 1000 });
      await t.rejects(
        cam2.publishAsync(updateTopic('site1', 'cam1'), job('from-cam2'), { qos: 1 }),
        { code: 135, message: /Not authorized/ },
        'cam2 may not publish a job',
      );
      await t.rejects(
        anonymous.publishAsync(updateTopic('site1', 'cam1'), job('from-anonymous'), { qos: 1 }),
        { code: 135 },
        'nor may an anonymous client',
      );
      // Nor read cam1's jobs (the nonce travels there), nor forge cam1's states.
      await t.rejects(
        cam2.subscribeAsync(updateTopic('site1', 'cam1'), { qos: 1 }),
        { message: /Subscribe error: Not authorized/ },
        "cam2 may not subscribe to cam1's job topic (SUBACK 0x87)",
      );
      await t.rejects(
        cam2.publishAsync(
          updateStateTopic('site1', 'cam1'),
          JSON.stringify({ jobId: 'x', state: 'committed', at: '' }),
          { qos: 1 },
        ),
        { code: 135 },
        'cam2 may not publish cam1 states',
      );
      await cam2.publishAsync(
        updateStateTopic('site1', 'cam2'),
        JSON.stringify({ jobId: 'own', state: 'failed', at: new Date().toISOString() }),
        { qos: 1 },
      );

      // The operator's job reaches cam1's agent, and its state reaches the operator.
      await operator.publishAsync(updateTopic('site1', 'cam1'), job('from-operator'), { qos: 1 });
      while (!states.some((e) => e.jobId === 'from-operator')) await new Promise((r) => setTimeout(r, 20));
      await first;
      t.match(
        states.find((e) => e.jobId === 'from-operator'),
        { state: 'failed', code: 'URL_NOT_ALLOWED' },
        'cam1 ran the operator job (its URL is outside its allow-list)',
      );
      t.ok(
        states.some((e) => e.jobId === 'own'),
        'cam2 publishes its own states',
      );
      t.notOk(
        states.some((e) => e.jobId === 'from-cam2' || e.jobId === 'from-anonymous' || e.jobId === 'x'),
        'no refused job ran, no forged state went through',
      );
    },
  );
}

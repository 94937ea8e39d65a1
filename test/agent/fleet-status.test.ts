/**
 * Targets across the fleet over a real broker (mosquitto, else aedes): agents report their target
 * in the retained status (and an agent that predates targets reports none); `setokim fleet status`
 * aggregates every device's retained status and update state (release, target, state, last error);
 * `setokim fleet rollout --target` sends the job only to the devices whose status names a matching
 * target (real update handlers installing a real bundle), and says why it skipped the others.
 */
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { connectAsync, type MqttClient } from 'mqtt';
import t from 'tap';
import { Agent } from '../../src/agent/agent.js';
import { collectFleetStatus, formatFleetStatus } from '../../src/agent/fleet-status.js';
import { sha256File } from '../../src/engine/manifest.js';
import { ModelStore } from '../../src/engine/modelset.js';
import { serveUpdates, UpdateHandler, updateStateTopic } from '../../src/fleet/index.js';
import { topicLink } from '../../src/mqtt/subscriptions.js';
import { runCli } from '../helpers/cli.js';
import { bundleOf, bundleServer, fixture, noCanary, testDevice } from '../fleet/helpers.js';
import { brokerKinds, startBroker, testConfig } from './brokers.js';
import { StubPipeline } from './stub-pipeline.js';

const NANO = 'orin-nano-8gb/jp6.2/trt10.3';
const AGX = 'agx-orin-64gb/jp6.1/trt10.3';
const FLEET = 'site';
const f = await fixture([1, 2]);
t.teardown(f.cleanup);
const b1 = await bundleOf(f, f.sets[1]!, 1);
const b2 = await bundleOf(f, f.sets[2]!, 2);
const broker = await startBroker(brokerKinds[0]!);
t.teardown(() => broker.close());
const http = await bundleServer({ 'r2.bundle': b2 });
t.teardown(http.close);

const clients: MqttClient[] = [];
const agents: Agent[] = [];
t.teardown(async () => {
  await Promise.all(agents.map((a) => a.stop(0)));
  await Promise.all(clients.map((c) => c.endAsync()));
});

/** An agent (stub pipeline: the status is what matters here) and, for cam1 and cam2, an update handler on a store with release 1. */
async function device(name: string, target?: string): Promise<string> {
  const agent = new Agent({
    config: testConfig(broker, name, { fleet: FLEET }),
    pipeline: new StubPipeline(),
    ...(target ? { target } : {}),
  });
  agents.push(agent);
  await agent.start();
  const store = path.join(f.dir, `store-${name}`);
  if (!target) return store;
  const handler = new UpdateHandler({
    binding: { device: testDevice },
    store,
    pubkey: f.pub,
    health: noCanary,
    urls: { allowUrls: [`${http.base}/`], allowHttp: true },
  });
  await handler.run(
    { jobId: 'preinstall', url: pathToFileURL(b1).href, sha256: await sha256File(b1) },
    () => {},
    'local',
  );
  const c = await connectAsync(broker.url, { clientId: `dev-${name}`, protocolVersion: broker.protocolVersion });
  clients.push(c);
  await serveUpdates(topicLink(c), handler, { fleet: FLEET, device: name });
  return store;
}

const stores = { cam1: await device('cam1', NANO), cam2: await device('cam2', AGX), cam3: await device('cam3') };
const op = await connectAsync(broker.url, { clientId: 'operator', protocolVersion: broker.protocolVersion });
clients.push(op);
const brokerArgs = ['--broker', broker.url, '--mqtt-version', String(broker.protocolVersion), '--fleet', FLEET];

t.test('the retained status carries each agent target; fleet status collects them', async (t) => {
  const s = await collectFleetStatus(op, { fleet: FLEET, quietMs: 300 });
  t.same(
    s.devices.map((d) => [d.device, d.status?.online, d.status?.target]),
    [
      ['cam1', true, NANO],
      ['cam2', true, AGX],
      ['cam3', true, undefined],
    ],
  );
  t.equal(s.unreadable, 0);
  t.same(
    s.devices.map((d) => d.update),
    [null, null, null],
    'no update job yet',
  );
});

t.test('fleet rollout --target: only matching devices get the job; the others are named as skipped', async (t) => {
  const r = await runCli([
    'fleet',
    'rollout',
    ...brokerArgs,
    '--devices',
    'cam1,cam2,cam3',
    '--target',
    'orin-nano-*/jp6.*/trt10.3',
    '--url',
    http.url('r2.bundle'),
    '--sha256',
    await sha256File(b2),
    '--timeout',
    '60',
    '--settle',
    '0',
  ]);
  t.equal(r.status, 0, r.err);
  t.equal(
    r.out,
    `cam2: skipped: target ${AGX} does not match orin-nano-*/jp6.*/trt10.3\ncam3: skipped: no retained status with a target\ncam1: committed\n`,
  );
  t.equal(await new ModelStore(stores.cam1).active(), 'setokim-tiny-seed2');
  t.equal(await new ModelStore(stores.cam2).active(), 'setokim-tiny-seed1', 'cam2 was not sent the job');
  const none = await runCli([
    'fleet',
    'rollout',
    ...brokerArgs,
    '--devices',
    'cam2,cam3',
    '--target',
    'agx-thor-*/*/*',
    '--url',
    http.url('r2.bundle'),
    '--sha256',
    await sha256File(b2),
  ]);
  t.equal(none.status, 2);
  t.match(none.err, /\[BAD_ARGUMENT\]: no device of --devices reports a target matching agx-thor-\*\/\*\/\*/);
});

t.test(
  'fleet status: release, target, state and last error of every device; unreadable messages counted',
  async (t) => {
    const failed = {
      jobId: 'j9',
      state: 'failed',
      code: 'ENGINE_BUILD_RESOURCES',
      message: 'an engine build needs more free host memory, CMA or disk than the device has',
      at: new Date().toISOString(),
    };
    await op.publishAsync(updateStateTopic(FLEET, 'cam2'), JSON.stringify(failed), { qos: 1, retain: true });
    await op.publishAsync(updateStateTopic(FLEET, 'cam4'), 'not json', { qos: 1, retain: true });
    const s = await collectFleetStatus(op, { fleet: FLEET, quietMs: 300 });
    const cam1 = s.devices.find((d) => d.device === 'cam1')!;
    t.match(cam1.update, { state: 'committed', release: 2, modelSetId: 'setokim-tiny-seed2' });
    t.match(s.devices.find((d) => d.device === 'cam2')!.update, { state: 'failed', code: 'ENGINE_BUILD_RESOURCES' });
    t.equal(s.unreadable, 1, "cam4's state did not decode");
    const table = formatFleetStatus(s).split('\n');
    t.match(table[0], /^device\s+online\s+release\s+model set\s+target\s+backend\s+update\s+last error$/);
    t.match(table[1], new RegExp(`^cam1\\s+yes \\(\\d+ s ago\\)\\s+2\\s+stub\\S*\\s+${NANO}\\s+\\S+\\s+committed \\(`));
    t.match(
      table[2],
      new RegExp(
        `^cam2\\s+yes .*\\s+-\\s+\\S+\\s+${AGX}\\s+.*failed \\(.*ENGINE_BUILD_RESOURCES: an engine build needs more free host memory`,
      ),
    );
    t.match(table[3], /^cam3\s+yes .*\s+\?\s+/);
    t.equal(table.at(-1), '(1 retained messages did not decode)');

    const cli = await runCli(['fleet', 'status', ...brokerArgs, '--quiet-ms', '300']);
    t.equal(cli.status, 0, cli.err);
    t.match(cli.out, new RegExp(`cam1 .*${NANO}.*committed`));
    const json = await runCli(['fleet', 'status', ...brokerArgs, '--json']);
    t.same(
      JSON.parse(json.out).devices.map((d: { device: string }) => d.device),
      ['cam1', 'cam2', 'cam3'],
      'a device is a row once something of it decodes',
    );
    t.equal(JSON.parse(json.out).unreadable, 1);
    await op.publishAsync(updateStateTopic(FLEET, 'cam4'), '', { qos: 1, retain: true }); // clears the retained message
  },
);

t.test('a stopped agent: its Last Will or offline status still names its target', async (t) => {
  await agents[1]!.stop();
  const s = await collectFleetStatus(op, { fleet: FLEET, quietMs: 300 });
  t.same(s.devices.find((d) => d.device === 'cam2')!.status?.online, false);
  t.equal(s.devices.find((d) => d.device === 'cam2')!.status?.target, AGX);
});

import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { loadAgentConfig, parseAgentConfig } from '../../src/agent/config.js';
import { SetokimError } from '../../src/errors.js';

const dir = mkdtempSync(join(tmpdir(), 'setokim-config-'));
const minimal = { fleet: 'f', device: 'd', models: './m', broker: { url: 'mqtt://localhost:1883' } };

t.test('defaults fill everything but fleet, device, models and broker.url', async (t) => {
  const c = parseAgentConfig(minimal);
  t.equal(c.broker.protocolVersion, 5);
  t.equal(c.fleetSubscription, 'shared');
  t.same(
    { queueSize: c.limits.queueSize, concurrency: c.limits.concurrency, maxImageBytes: c.limits.maxImageBytes },
    { queueSize: 16, concurrency: 1, maxImageBytes: 8 * 1024 * 1024 },
  );
  t.equal(c.metrics.port, 9464);
  t.same(c.replyTopics, [], 'replies under setokim/v1/replies/ only');
  t.equal(c.limits.maxPromptBytes, 16384);
});

t.test('reply topic filters from the file, the variable and the repeatable flag', async (t) => {
  const filters = ['plant/replies/#', '+/answers', 'setokim/v1/replies/x/#'];
  t.same(parseAgentConfig({ ...minimal, replyTopics: filters }).replyTopics, filters);
  const env = { SETOKIM_BROKER: 'mqtt://b', SETOKIM_MODELS: 'm', SETOKIM_REPLY_TOPICS: 'a/#, b/+/c' };
  t.same(loadAgentConfig({ env, defaults: { fleet: 'f', device: 'd' } }).replyTopics, ['a/#', 'b/+/c']);
});

t.test('file < environment < flags, YAML and JSON', async (t) => {
  const yaml = join(dir, 'agent.yaml');
  writeFileSync(
    yaml,
    'fleet: plant\ndevice: cam-1\nmodels: /opt/models\nbroker:\n  url: mqtts://broker:8883\n  username: edge\nlimits:\n  queueSize: 4\n',
  );
  const env = { SETOKIM_QUEUE_SIZE: '8', SETOKIM_PASSWORD: 's3cret', SETOKIM_METRICS: 'false' };
  const c = loadAgentConfig({ file: yaml, env, overrides: { limits: { concurrency: 2 }, device: 'cam-2' } });
  t.same([c.fleet, c.device, c.models], ['plant', 'cam-2', '/opt/models']);
  t.same([c.broker.url, c.broker.username, c.broker.password], ['mqtts://broker:8883', 'edge', 's3cret']);
  t.same([c.limits.queueSize, c.limits.concurrency], [8, 2], 'env beats the file, flags beat both');
  t.equal(c.metrics.enabled, false);
  const json = join(dir, 'agent.json');
  writeFileSync(json, JSON.stringify(minimal));
  t.equal(loadAgentConfig({ file: json, env: {} }).device, 'd');
  t.equal(
    loadAgentConfig({
      env: { SETOKIM_BROKER: 'mqtt://b', SETOKIM_MODELS: 'm' },
      defaults: { fleet: 'default', device: 'host' },
    }).fleet,
    'default',
  );
});

t.test('every problem is BAD_CONFIG naming the setting', async (t) => {
  const bad = (input: unknown, pattern: RegExp, what: string): void => {
    try {
      parseAgentConfig(input);
      t.fail(`${what}: accepted`);
    } catch (err) {
      t.ok(
        err instanceof SetokimError && err.code === 'BAD_CONFIG' && pattern.test(err.message),
        `${what}: ${(err as Error).message.split('\n')[1]}`,
      );
    }
  };
  bad({ ...minimal, fleet: 'a/b' }, /fleet: use letters/, 'a fleet with a slash');
  bad({ ...minimal, device: '+' }, /device/, 'a wildcard device');
  bad({ ...minimal, broker: { url: 'http://x' } }, /broker\.url: must start with mqtt/, 'wrong scheme');
  bad(
    { ...minimal, broker: { url: 'mqtt://x', cert: 'c.pem' } },
    /cert and broker.key go together/,
    'cert without key',
  );
  bad({ ...minimal, limits: { concurrency: 0 } }, /limits\.concurrency/, 'zero concurrency');
  bad({ ...minimal, limits: { queueSize: 4, bogus: 1 } }, /bogus|Unrecognized/i, 'unknown key');
  bad({ device: 'd' }, /fleet/, 'missing fleet');
  const overTree = /replyTopics\.0: inside setokim\/ replies go to setokim\/v1\/replies\/# only/;
  bad({ ...minimal, replyTopics: ['setokim/v1/#'] }, overTree, 'a reply filter over the topic tree');
  bad({ ...minimal, replyTopics: ['$SYS/#'] }, /replyTopics\.0: a \$ topic/, 'a $ reply filter');
  bad({ ...minimal, replyTopics: ['a/#/b'] }, /replyTopics\.0: not an MQTT topic filter/, 'a # before the last level');
  bad({ ...minimal, replyTopics: ['a/b+'] }, /replyTopics\.0: not an MQTT topic filter/, 'a + inside a level');
  bad({ ...minimal, limits: { maxPromptBytes: 0 } }, /limits\.maxPromptBytes/, 'no prompt at all');
  t.throws(() => loadAgentConfig({ env: { SETOKIM_QUEUE_SIZE: 'many' } }), /SETOKIM_QUEUE_SIZE=many is not a number/);
  t.throws(() => loadAgentConfig({ file: join(dir, 'missing.yaml'), env: {} }), /cannot read the config file/);
  const broken = join(dir, 'broken.json');
  writeFileSync(broken, '{ not json');
  t.throws(() => loadAgentConfig({ file: broken, env: {} }), /not valid JSON/);
});

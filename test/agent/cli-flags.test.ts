/**
 * `setokim agent` flags go through the shared parseFlags: a bad one is BAD_ARGUMENT naming it; the
 * rest land on the config's paths, where the config schema checks ranges (BAD_CONFIG).
 */
import t from 'tap';
import { loadAgentConfig } from '../../src/agent/config.js';
import { flagsToConfig } from '../../src/cli/agent.js';

t.test('a flag that is not a number is BAD_ARGUMENT naming the flag and the value', async (t) => {
  t.throws(() => flagsToConfig({ queueSize: 'many' }), {
    code: 'BAD_ARGUMENT',
    message: 'agent: --queue-size: many is not a number',
  });
  t.throws(() => flagsToConfig({ metricsPort: '9464x' }), {
    code: 'BAD_ARGUMENT',
    message: /^agent: --metrics-port: 9464x is not a number$/,
  });
  // Number('') is 0: an empty value must not quietly become a queue of none.
  t.throws(() => flagsToConfig({ queueSize: '' }), { code: 'BAD_ARGUMENT', message: /--queue-size/ });
  t.throws(() => flagsToConfig({ threads: '  ' }), { code: 'BAD_ARGUMENT', message: /--threads/ });
});

t.test('flags land on the config paths, and the config schema checks their ranges', async (t) => {
  const overrides = flagsToConfig({
    broker: 'mqtt://b:1883',
    models: 'm',
    fleet: 'plant',
    device: 'cam-1',
    mqttVersion: '4',
    queueSize: '8',
    concurrency: '2',
    maxImageBytes: '65536',
    metricsPort: '0',
    threads: '3',
    visionCacheBytes: '1048576',
    conversationIdleMs: '30000',
    insecure: true,
    metrics: false,
    verify: false,
    verbose: true,
  });
  const c = loadAgentConfig({ env: {}, overrides });
  t.same(
    [c.fleet, c.device, c.models, c.broker.url, c.broker.protocolVersion, c.broker.rejectUnauthorized],
    ['plant', 'cam-1', 'm', 'mqtt://b:1883', 4, false],
  );
  t.same([c.limits.queueSize, c.limits.concurrency, c.limits.maxImageBytes], [8, 2, 65536]);
  t.same([c.metrics.port, c.metrics.enabled, c.pipeline.threads, c.pipeline.verify], [0, false, 3, false]);
  t.same([c.pipeline.visionCacheBytes, c.pipeline.conversationIdleMs], [1048576, 30000], 'cache settings');
  t.throws(
    () =>
      loadAgentConfig({
        env: {},
        overrides: flagsToConfig({ broker: 'mqtt://b', models: 'm', fleet: 'f', device: 'd', visionCacheBytes: '-1' }),
      }),
    {
      code: 'BAD_CONFIG',
      message: /pipeline\.visionCacheBytes/,
    },
  );
  t.equal(
    loadAgentConfig({
      env: { SETOKIM_VISION_CACHE_BYTES: '0' },
      overrides: flagsToConfig({ broker: 'mqtt://b', models: 'm', fleet: 'f', device: 'd' }),
    }).pipeline.visionCacheBytes,
    0,
    'from the environment: 0 turns it off',
  );
  const defaults = loadAgentConfig({
    env: {},
    overrides: flagsToConfig({ broker: 'mqtt://b', models: 'm', fleet: 'f', device: 'd', metrics: true, verify: true }),
  });
  t.same(
    [defaults.metrics.enabled, defaults.pipeline.verify, defaults.broker.rejectUnauthorized, defaults.limits.queueSize],
    [true, true, true, 16],
    'unset flags leave the defaults',
  );
  t.throws(
    () =>
      loadAgentConfig({
        env: {},
        overrides: flagsToConfig({ broker: 'mqtt://b', models: 'm', fleet: 'f', device: 'd', mqttVersion: '3' }),
      }),
    {
      code: 'BAD_CONFIG',
      message: /broker\.protocolVersion/,
    },
  );
});

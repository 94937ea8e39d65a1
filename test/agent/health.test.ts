/**
 * Device health (src/agent/tegrastats.ts, health.ts): real tegrastats lines from Orin boards on
 * JetPack 6 and 5 parsed field by field; the energy integration in numbers; and an agent on a real
 * broker whose tegrastats is the TegrastatsTestDouble (fixtures/tegrastats-test-double.mjs, which
 * replays those recorded lines: tegrastats exists only on a Jetson): Prometheus gauges over HTTP,
 * the summary in the retained status, energy in `done`; and all of it absent without tegrastats.
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import t, { type Test } from 'tap';
import { Agent } from '../../src/agent/agent.js';
import { QueryClient, newQueryId } from '../../src/agent/client.js';
import { decodeStatus, type AgentStatus, type ReplyEvent } from '../../src/agent/codec.js';
import { DeviceHealth, EnergyMeter } from '../../src/agent/health.js';
import { AgentMetrics } from '../../src/agent/metrics.js';
import { boardPower, parseTegrastats } from '../../src/agent/tegrastats.js';
import { brokerKinds, startBroker, testConfig, type TestBroker } from './brokers.js';
import { StubPipeline, samplePng } from './stub-pipeline.js';

const linesFile = fileURLToPath(new URL('./fixtures/tegrastats-orin.txt', import.meta.url));
const double = fileURLToPath(new URL('./fixtures/tegrastats-test-double.mjs', import.meta.url));
const LINES = readFileSync(linesFile, 'utf8')
  .split('\n')
  .filter((l) => l && !l.startsWith('#'));
const [JP6_IDLE, JP6_BUSY, JP6_USER, JP5_AGX64, JP5_AGX32, JP5_USER] = LINES.map((l) => parseTegrastats(l)!);

t.test('JetPack 6, Orin Nano Super, root: every field', async (t) => {
  const s = JP6_BUSY!;
  t.same([s.ramUsedMib, s.ramTotalMib, s.swapUsedMib, s.swapTotalMib], [6712, 7620, 369, 3810]);
  t.same(s.cpus, [{ loadPct: 38, freqMhz: 1497 }, ...[2, 1, 0, 1, 0].map((loadPct) => ({ loadPct, freqMhz: 729 }))]);
  t.same([s.emcLoadPct, s.emcFreqMhz, s.gpuLoadPct, s.gpuFreqMhz], [61, 2133, 99, 612]);
  t.same(s.temps, { cpu: 57.125, soc2: 55.093, soc0: 56.625, gpu: 58.625, tj: 58.312, soc1: 55.937 });
  t.same(s.rails, {
    VDD_IN: { mW: 16321, avgMw: 11204 },
    VDD_CPU_GPU_CV: { mW: 7104, avgMw: 4944 },
    VDD_SOC: { mW: 3120, avgMw: 3659 },
  });
  t.same(
    boardPower(s, ['VDD_IN', 'POM_5V_IN']),
    { rail: 'VDD_IN', mW: 16321 },
    'the instantaneous input power, not the running average',
  );
  t.same([JP6_IDLE!.gpuLoadPct, JP6_IDLE!.gpuFreqMhz, JP6_IDLE!.emcLoadPct, JP6_IDLE!.emcFreqMhz], [0, 305, 15, 204]);
});

t.test('JetPack 6 as a normal user: no EMC, no GPU clock; rails still there', async (t) => {
  const s = JP6_USER!;
  t.equal(s.emcLoadPct, undefined);
  t.equal(s.emcFreqMhz, undefined);
  t.same([s.gpuLoadPct, s.gpuFreqMhz], [0, undefined]);
  t.equal(s.cpus.length, 6);
  t.equal(boardPower(s, ['VDD_IN'])?.mW, 5263);
});

t.test('JetPack 5, AGX Orin: upper-case sensors, -256C sensors and NC rails left out, no input rail', async (t) => {
  const s = JP5_AGX64!;
  t.same(
    [s.ramUsedMib, s.ramTotalMib, s.cpus.length, s.emcLoadPct, s.emcFreqMhz, s.gpuLoadPct, s.gpuFreqMhz],
    [1282, 62795, 12, 0, 2133, 0, 0],
  );
  t.same(
    s.temps,
    { cpu: 42.593, tboard: 32, soc2: 39.343, tdiode: 33.25, soc0: 39.375, tj: 42.593, soc1: 40.468 },
    'CV0, CV1, CV2 and GPU read -256C: off',
  );
  t.same(
    Object.keys(s.rails),
    ['VDD_GPU_SOC', 'VDD_CPU_CV', 'VIN_SYS_5V0', 'VDDQ_VDD2_1V8AO'],
    'the two NC channels are not rails',
  );
  t.equal(boardPower(s, ['VDD_IN', 'POM_5V_IN']), undefined, 'no input rail: no board power by default');
  t.same(boardPower(s, ['VDD_IN', 'VDD_GPU_SOC+VDD_CPU_CV+VIN_SYS_5V0']), {
    rail: 'VDD_GPU_SOC+VDD_CPU_CV+VIN_SYS_5V0',
    mW: 2399 + 400 + 4032,
  });
  t.same(
    [JP5_AGX32!.gpuFreqMhz, JP5_AGX32!.emcFreqMhz, JP5_AGX32!.temps.gpu],
    [114, 204, 38.156],
    'a GPU sensor that is on',
  );
  const u = JP5_USER!;
  t.same(
    [u.emcLoadPct, u.emcFreqMhz, u.gpuLoadPct, u.gpuFreqMhz, Object.keys(u.rails).length],
    [0, undefined, 75, undefined, 0],
  );
  t.same(
    u.cpus.map((c) => c?.loadPct),
    [10, 20, 30, 40, 50, 0, 60, 70, 80, 90, 100, 0],
  );
});

t.test('other lines and offline cores', async (t) => {
  t.equal(parseTegrastats(''), undefined);
  t.equal(parseTegrastats('tegrastats: command not permitted'), undefined);
  const s = parseTegrastats(
    'RAM 4096/16384MB (lfb 1024x4MB) CPU [10%@1190,off,30%@1190] GR3D_FREQ 55%@921 POM_5V_IN 5336/4970',
  )!;
  t.same(s.cpus, [{ loadPct: 10, freqMhz: 1190 }, null, { loadPct: 30, freqMhz: 1190 }]);
  t.same(
    boardPower(s, ['VDD_IN', 'POM_5V_IN']),
    { rail: 'POM_5V_IN', mW: 5336 },
    'rails without a unit (older L4T) are mW',
  );
});

t.test('energy: the power curve between samples, held for the slack past its ends', async (t) => {
  const m = new EnergyMeter(1000);
  t.equal(m.between(0, 10), undefined, 'no samples: no energy');
  m.add(10_000, 5000);
  m.add(11_000, 7000);
  m.add(12_000, 7000);
  t.equal(m.between(10_250, 10_750), 3000, '6 W on average for 0.5 s');
  t.equal(m.between(10_000, 12_000), 6000 + 7000);
  t.equal(m.between(12_000, 12_500), 3500, 'the last sample holds until the next is due');
  t.equal(m.between(9_500, 10_000), 2500, 'and the first from just before');
  t.equal(m.between(12_000, 13_001), undefined, 'past the slack: tegrastats is not reporting');
  t.equal(m.between(8_999, 10_000), undefined, 'before the samples began');
  t.equal(m.between(11_000, 10_000), undefined, 'an empty window');
  m.reset();
  t.equal(m.between(10_250, 10_750), undefined, 'reset: nothing to integrate');
});

t.test('DeviceHealth: a tegrastats that exits clears every gauge and the summary, and is started again', async (t) => {
  const metrics = new AgentMetrics();
  const logs: string[] = [];
  process.env.TEGRASTATS_TEST_LINES = linesFile;
  process.env.TEGRASTATS_TEST_EXIT_AFTER = '2';
  t.teardown(() => {
    delete process.env.TEGRASTATS_TEST_EXIT_AFTER;
  });
  const h = new DeviceHealth({
    tegrastats: double,
    intervalMs: 100,
    energyRails: ['VDD_IN'],
    metrics,
    log: (_l, m) => logs.push(m),
    restartMs: 200,
  });
  t.teardown(() => h.stop());
  const samples: number[] = [];
  const sampled = (n: number) =>
    new Promise<void>((resolve) => (h.onSample = (s) => samples.push(s.ramUsedMib!) === n && resolve()));
  t.ok(h.start());
  await sampled(2);
  t.same(samples, [1343, 6712], 'the recorded lines in order');
  const exited = new Promise<void>((resolve) => {
    const timer = setInterval(() => logs.some((l) => /exited \(1\)/.test(l)) && (clearInterval(timer), resolve()), 10);
  });
  await exited;
  t.equal(h.summary(), undefined, 'no summary from a dead tegrastats');
  t.equal(h.energyMj(Date.now() - 50, Date.now()), undefined, 'no energy either');
  t.notMatch(
    await metrics.registry.metrics(),
    /setokim_device_(memory|power|temperature)\S*\{/,
    'no gauge keeps a value',
  );
  await sampled(3);
  t.equal(samples[2], 1343, 'started again, from its first line');
});

t.test('DeviceHealth off where there is no tegrastats', async (t) => {
  const logs: string[] = [];
  const metrics = new AgentMetrics();
  const h = new DeviceHealth({
    tegrastats: '/nonexistent/tegrastats',
    intervalMs: 100,
    energyRails: ['VDD_IN'],
    metrics,
    log: (_l, m) => logs.push(m),
  });
  t.equal(h.start(), false);
  t.same(logs, ['device health off: /nonexistent/tegrastats not found (tegrastats exists on Jetsons only)']);
  t.equal(h.summary(), undefined);
  t.equal(h.energyMj(0, Date.now()), undefined);
  t.notMatch(await metrics.registry.metrics(), /setokim_device_|energy/);
});

interface Seen {
  statuses: AgentStatus[];
  next(match: (s: AgentStatus) => boolean): Promise<AgentStatus>;
}

async function watchStatus(client: QueryClient, topic: string): Promise<Seen> {
  const statuses: AgentStatus[] = [];
  const waiters: Array<() => void> = [];
  client.mqtt.on('message', (tp, payload) => {
    if (tp !== topic) return;
    statuses.push(decodeStatus(payload));
    for (const w of waiters.splice(0)) w();
  });
  await client.mqtt.subscribeAsync(topic, { qos: 1 });
  return {
    statuses,
    next: (match) =>
      new Promise((resolve) => {
        const check = () => {
          const hit = statuses.find(match);
          if (hit) resolve(hit);
          else waiters.push(check);
        };
        check();
      }),
  };
}

async function scrape(port: number): Promise<string> {
  return (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
}

async function runAgent(t: Test, broker: TestBroker, device: string, tegrastats: string) {
  process.env.TEGRASTATS_TEST_LINES = linesFile;
  process.env.TEGRASTATS_TEST_PICK = '1'; // the busy JetPack 6 line: VDD_IN 16321 mW on every reading
  const pipeline = new StubPipeline({ holdable: true });
  const agent = new Agent({
    config: testConfig(broker, device, { statusIntervalMs: 100, health: { tegrastats, intervalMs: 100 } }),
    pipeline,
  });
  const client = await QueryClient.connect({ url: broker.url, protocolVersion: broker.protocolVersion });
  t.teardown(async () => {
    delete process.env.TEGRASTATS_TEST_PICK;
    await client.close();
    await agent.stop(0);
    await broker.close();
  });
  await agent.start();
  return { agent, pipeline, client };
}

async function collect(stream: AsyncIterable<ReplyEvent>): Promise<ReplyEvent[]> {
  const out: ReplyEvent[] = [];
  for await (const e of stream) out.push(e);
  return out;
}

const kind = brokerKinds[0]!;

t.test(
  `${kind}: an agent on a Jetson (tegrastats test double): gauges, status summary, energy per query`,
  async (t) => {
    const broker = await startBroker(kind);
    const { agent, pipeline, client } = await runAgent(t, broker, 'jetson', double);
    const watch = await watchStatus(client, agent.topics.status);
    const status = await watch.next((s) => s.online && !!s.health);
    t.same(status.health && { ...status.health, sampledUnixMs: 0 }, {
      ramUsedMib: 6712,
      ramTotalMib: 7620,
      gpuLoadPct: 99,
      emcLoadPct: 61,
      tempC: 58.312,
      tempSensor: 'tj',
      powerMw: 16321,
      powerRail: 'VDD_IN',
      sampledUnixMs: 0,
    });
    t.ok(Math.abs(status.health!.sampledUnixMs - Date.now()) < 5000, 'sampled just now');
    const text = await scrape(agent.metricsPort!);
    for (const line of [
      'setokim_device_memory_bytes{kind="ram_used"} 7038042112',
      'setokim_device_memory_bytes{kind="swap_total"} 3995074560',
      'setokim_device_load_ratio{unit="gpu"} 0.99',
      'setokim_device_frequency_hertz{unit="emc"} 2133000000',
      'setokim_device_cpu_load_ratio{cpu="0"} 0.38',
      'setokim_device_temperature_celsius{sensor="tj"} 58.312',
      'setokim_device_power_watts{rail="VDD_IN"} 16.321',
      'setokim_device_power_watts{rail="VDD_SOC"} 3.12',
    ]) {
      t.ok(text.includes(line), line);
    }

    // A query held in flight across several readings: its energy is 16.321 W times how long it ran.
    const id = newQueryId();
    const sentAt = Date.now();
    const stream = collect(
      client.query(
        { fleet: 'test', device: 'jetson' },
        { id, task: 'ask', prompt: 'hold this one', image: await samplePng() },
      ),
    );
    await pipeline.waitHeld(id);
    const heldAt = Date.now();
    await watch.next((s) => s.inFlight === 1 && s.health!.sampledUnixMs > heldAt + 250);
    pipeline.release(id);
    const events = await stream;
    const roundTripMs = Date.now() - sentAt;
    const done = events.at(-1)!;
    t.equal(done.type, 'done');
    const energy = (done as Extract<ReplyEvent, { type: 'done' }>).energyMj!;
    t.ok(energy >= 16.321 * 250, `at least 250 ms at 16.321 W: ${energy} mJ`);
    t.ok(energy <= 16.321 * roundTripMs, `at most the round trip (${roundTripMs} ms) at 16.321 W: ${energy} mJ`);
    t.match(await scrape(agent.metricsPort!), /setokim_query_energy_joules_count 1\n/);
  },
);

t.test(
  `${kind}: an agent without tegrastats: no device gauges, no health in the status, no energy in done`,
  async (t) => {
    const broker = await startBroker(kind);
    const { agent, client } = await runAgent(t, broker, 'laptop', '/nonexistent/tegrastats');
    const status = (await client.status('test', 'laptop'))!;
    t.equal(status.online, true);
    t.notOk('health' in status, 'no health summary');
    const events = await collect(
      client.query(
        { fleet: 'test', device: 'laptop' },
        { id: newQueryId(), task: 'ask', prompt: 'hello there', image: await samplePng() },
      ),
    );
    const done = events.at(-1)!;
    t.equal(done.type, 'done');
    t.notOk('energyMj' in done, 'no energy');
    t.notMatch(await scrape(agent.metricsPort!), /setokim_device_|energy/);
  },
);

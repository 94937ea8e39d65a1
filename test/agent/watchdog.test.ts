/**
 * systemd notifications (src/agent/watchdog.ts): real datagrams through the addon's sd_notify to a
 * listening socket (test/helpers/notify-socket.ts), on a path and in the abstract namespace; the
 * watchdog only when WATCHDOG_PID is this process; and `setokim agent` as a process under a
 * notify socket: READY=1, WATCHDOG=1 at half the interval while it serves, STOPPING=1 on SIGTERM.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { SystemdNotifier } from '../../src/agent/watchdog.js';
import { synthesize } from '../../tools/export/synth.js';
import { childEnv } from '../helpers/child-env.js';
import { listenNotify } from '../helpers/notify-socket.js';
import { brokerKinds, startBroker } from './brokers.js';

t.test('no NOTIFY_SOCKET: no notifier (not under systemd)', async (t) => {
  t.equal(SystemdNotifier.fromEnv({ env: {} }), undefined);
  t.equal(SystemdNotifier.fromEnv({ env: { NOTIFY_SOCKET: '' } }), undefined);
});

for (const abstract of [false, true]) {
  t.test(`READY, STATUS, WATCHDOG and STOPPING arrive on ${abstract ? 'an abstract' : 'a path'} socket`, async (t) => {
    const sock = await listenNotify({ abstract });
    t.teardown(() => sock.close());
    const n = SystemdNotifier.fromEnv({
      env: { NOTIFY_SOCKET: sock.address, WATCHDOG_USEC: '300000', WATCHDOG_PID: String(process.pid) },
    })!;
    t.teardown(() => n.close());
    t.equal(n.pingEveryMs, 150, 'half of WATCHDOG_USEC, in ms');
    n.ready('serving set-1;\nconnecting');
    t.equal((await sock.next(/^READY=1/)).state, 'READY=1\nSTATUS=serving set-1; connecting', 'one status line');
    n.startWatchdog();
    const from = sock.received.length;
    const pings: Awaited<ReturnType<typeof sock.next>>[] = [];
    for (let i = 0; i < 4; i++) pings.push(await sock.next(/^WATCHDOG=1$/, from + i));
    const gaps = pings.slice(1).map((p, i) => p.at - pings[i]!.at);
    // The first goes at once; then one per interval, never faster (a slow CI box may be slower).
    t.ok(
      gaps.every((g) => g >= 120),
      `gaps between pings ${gaps.map((g) => g.toFixed(0)).join(', ')} ms >= 120`,
    );
    n.stopping('SIGTERM: finishing 1 in flight');
    t.equal((await sock.next(/^STOPPING=1/)).state, 'STOPPING=1\nSTATUS=SIGTERM: finishing 1 in flight');
  });
}

t.test('the watchdog is off when WATCHDOG_PID names another process, or WATCHDOG_USEC is not a number', async (t) => {
  for (const env of [
    { WATCHDOG_USEC: '300000', WATCHDOG_PID: String(process.pid + 1) },
    { WATCHDOG_USEC: 'soon' },
    {},
  ]) {
    const n = SystemdNotifier.fromEnv({ env: { NOTIFY_SOCKET: '/run/none', ...env } })!;
    t.equal(n.pingEveryMs, undefined, JSON.stringify(env));
  }
  t.equal(
    SystemdNotifier.fromEnv({ env: { NOTIFY_SOCKET: '/run/none', WATCHDOG_USEC: '2000000' } })!.pingEveryMs,
    1000,
    'no WATCHDOG_PID: ours',
  );
});

t.test('a socket that is gone is logged once, not thrown, and not logged on every ping', async (t) => {
  const logs: string[] = [];
  const dir = mkdtempSync(join(tmpdir(), 'setokim-notify-gone-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const n = SystemdNotifier.fromEnv({
    env: { NOTIFY_SOCKET: join(dir, 'gone.sock'), WATCHDOG_USEC: '20000' },
    log: (_l, m) => logs.push(m),
  })!;
  t.teardown(() => n.close());
  n.ready('x');
  n.status('y');
  t.equal(logs.length, 1);
  t.match(logs[0], /systemd notification failed \(sd_notify to .*gone\.sock: sendto: No such file or directory\)/);
});

const kind = brokerKinds[0]!;

t.test(
  `setokim agent under a notify socket (${kind}): READY, WATCHDOG while serving, STOPPING on SIGTERM`,
  async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'setokim-watchdog-'));
    t.teardown(() => rmSync(dir, { recursive: true, force: true }));
    await synthesize({ config: 'tiny', seed: 4, out: join(dir, 'tiny') });
    const broker = await startBroker(kind);
    t.teardown(() => broker.close());
    const sock = await listenNotify();
    t.teardown(() => sock.close());
    const cli = fileURLToPath(new URL('./fixtures/cli.ts', import.meta.url));
    const args = [
      'agent',
      '--broker',
      broker.url,
      '--mqtt-version',
      String(broker.protocolVersion),
      '--models',
      join(dir, 'tiny'),
      '--fleet',
      'wd',
      '--device',
      'dev',
      '--metrics-port',
      '0',
      '--no-verify',
      '--fleet-subscription',
      broker.shared ? 'shared' : 'plain',
    ];
    const child = spawn(process.execPath, ['--import', 'tsx', cli, ...args], {
      env: childEnv({ NOTIFY_SOCKET: sock.address, WATCHDOG_USEC: '400000' }),
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
    const exit = new Promise<number | null>((resolve) => child.once('exit', resolve));
    t.teardown(() => child.kill('SIGKILL'));

    const ready = await sock.next(/^READY=1/);
    t.match(ready.state, /^READY=1\nSTATUS=serving \S+; connecting to mqtt:\/\/127\.0\.0\.1:\d+$/);
    t.match((await sock.next(/^STATUS=serving \S+; connected to/)).state, /connected to mqtt:\/\/127\.0\.0\.1/);
    const at = sock.received.indexOf(ready);
    await sock.next(/^WATCHDOG=1$/, at + 1);
    const second = await sock.next(
      /^WATCHDOG=1$/,
      sock.received.findIndex((n, i) => i > at && n.state === 'WATCHDOG=1') + 1,
    );
    t.ok(second, 'fed again while serving');
    child.kill('SIGTERM');
    t.match((await sock.next(/^STOPPING=1/)).state, /^STOPPING=1\nSTATUS=SIGTERM: finishing 0 in flight and 0 queued$/);
    t.equal(await exit, 0, stderr);
  },
);

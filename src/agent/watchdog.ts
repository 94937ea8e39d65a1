/**
 * systemd notifications for the agent's unit (`Type=notify`, `WatchdogSec=`; docs/FLASHING.md):
 * READY=1 once the model set is open and the serving loop runs, WATCHDOG=1 every half of the
 * watchdog interval from a timer on the event loop (a loop that stops turning stops feeding it, and
 * systemd restarts the service), STOPPING=1 when a stop begins. The protocol is sd_notify(3): one
 * datagram to $NOTIFY_SOCKET, sent by the addon (native/trt/common/sd_notifier.h); the watchdog
 * is ours only when $WATCHDOG_USEC is set and $WATCHDOG_PID is unset or this process.
 */
import { loadNative } from '../engine/native.js';
import type { Logger } from './agent.js';

/** Sends one notification; throws with the reason when it cannot. */
export type NotifySend = (socket: string, state: string) => void;

const nativeSend: NotifySend = (socket, state) => {
  const addon = loadNative();
  if (!addon.sdNotify) throw new Error('the native addon has no sdNotify (rebuild it: npm run build:native)');
  addon.sdNotify(socket, state);
};

export interface NotifierOptions {
  env?: NodeJS.ProcessEnv;
  pid?: number;
  send?: NotifySend;
  log?: Logger;
}

/** Newlines would start another KEY=VALUE line: a status text stays on one. */
const oneLine = (text: string) => text.replace(/[\r\n]+/g, ' ').slice(0, 400);

export class SystemdNotifier {
  /** Half of the watchdog interval, when the service manager expects keep-alives from this process. */
  readonly pingEveryMs: number | undefined;
  private timer?: NodeJS.Timeout;
  private failed = false;

  private constructor(
    readonly socket: string,
    watchdogUsec: number | undefined,
    private readonly send: NotifySend,
    private readonly log: Logger,
  ) {
    this.pingEveryMs = watchdogUsec === undefined ? undefined : Math.max(1, Math.floor(watchdogUsec / 2000));
  }

  /** The notifier for this process, or undefined when no service manager listens ($NOTIFY_SOCKET unset). */
  static fromEnv(o: NotifierOptions = {}): SystemdNotifier | undefined {
    const env = o.env ?? process.env;
    const socket = env.NOTIFY_SOCKET;
    if (!socket) return undefined;
    const usec = Number(env.WATCHDOG_USEC);
    const forUs =
      env.WATCHDOG_PID === undefined || env.WATCHDOG_PID === '' || Number(env.WATCHDOG_PID) === (o.pid ?? process.pid);
    const watchdog = forUs && Number.isSafeInteger(usec) && usec > 0 ? usec : undefined;
    return new SystemdNotifier(socket, watchdog, o.send ?? nativeSend, o.log ?? (() => undefined));
  }

  /** READY=1 with a status line (`systemctl status` shows it). */
  ready(status: string): void {
    this.notify(`READY=1\nSTATUS=${oneLine(status)}`);
  }

  status(status: string): void {
    this.notify(`STATUS=${oneLine(status)}`);
  }

  /** Feeds the watchdog now and every pingEveryMs after; nothing when the watchdog is off. */
  startWatchdog(): void {
    if (this.pingEveryMs === undefined || this.timer) return;
    this.notify('WATCHDOG=1');
    this.timer = setInterval(() => this.notify('WATCHDOG=1'), this.pingEveryMs);
    this.timer.unref(); // never what keeps the process alive
  }

  /** STOPPING=1; the watchdog keeps being fed while the agent drains (a long drain is not a hang). */
  stopping(status: string): void {
    this.notify(`STOPPING=1\nSTATUS=${oneLine(status)}`);
  }

  /** Stops feeding the watchdog (the process is about to exit). */
  close(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }

  private notify(state: string): void {
    try {
      this.send(this.socket, state);
      this.failed = false;
    } catch (err) {
      // Logged once per run of failures: a watchdog timer must not flood the log.
      if (!this.failed)
        this.log(
          'warn',
          `systemd notification failed (${(err as Error).message}); the service manager may restart the agent`,
        );
      this.failed = true;
    }
  }
}

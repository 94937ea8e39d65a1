/**
 * Device health on a Jetson: `tegrastats --interval N` runs beside the agent and each line it
 * prints becomes Prometheus gauges (DeviceMetrics), a summary in the retained status, and the
 * power curve queries' energy is integrated from. Where there is no tegrastats (any machine but a
 * Jetson) nothing is started and every one of these stays absent: no gauge, no summary, no energy.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { isAbsolute } from 'node:path';
import { createInterface } from 'node:readline';
import type { Logger } from './agent.js';
import type { AgentMetrics, DeviceMetrics } from './metrics.js';
import { boardPower, parseTegrastats, type TegraSample } from './tegrastats.js';

/** What the retained status carries (proto/setokim.proto DeviceHealth). */
export interface HealthSummary {
  ramUsedMib?: number;
  ramTotalMib?: number;
  gpuLoadPct?: number;
  emcLoadPct?: number;
  /** The junction temperature (tj) where printed, else the hottest sensor. */
  tempC?: number;
  tempSensor?: string;
  powerMw?: number;
  powerRail?: string;
  sampledUnixMs: number;
}

/** What the agent asks of device health. */
export interface HealthSource {
  summary(): HealthSummary | undefined;
  /** Board energy in mJ between two times (ms), or undefined when the samples do not cover them. */
  energyMj(from: number, to: number): number | undefined;
}

/**
 * Power samples over time, integrated as a piecewise-linear curve held flat for `slackMs` past its
 * ends (the last sample stands until the next is due). A window the curve does not reach, e.g.
 * after tegrastats stopped, has no energy.
 */
export class EnergyMeter {
  private readonly samples: Array<{ at: number; mW: number }> = [];

  constructor(
    private readonly slackMs: number,
    private readonly keepMs = 30 * 60_000,
  ) {}

  reset(): void {
    this.samples.length = 0;
  }

  add(at: number, mW: number): void {
    this.samples.push({ at, mW });
    while (this.samples.length > 2 && this.samples[0]!.at < at - this.keepMs) this.samples.shift();
  }

  private power(t: number): number {
    const s = this.samples;
    if (t <= s[0]!.at) return s[0]!.mW;
    for (let i = 1; i < s.length; i++) {
      const b = s[i]!;
      if (t <= b.at) {
        const a = s[i - 1]!;
        return a.mW + ((b.mW - a.mW) * (t - a.at)) / (b.at - a.at || 1);
      }
    }
    return s[s.length - 1]!.mW;
  }

  /** mJ from `from` to `to` (ms). */
  between(from: number, to: number): number | undefined {
    const s = this.samples;
    if (!s.length || to < from || from < s[0]!.at - this.slackMs || to > s[s.length - 1]!.at + this.slackMs)
      return undefined;
    const points = [from, ...s.map((x) => x.at).filter((at) => at > from && at < to), to];
    let microJoules = 0; // mW x ms
    for (let i = 1; i < points.length; i++) {
      const [a, b] = [points[i - 1]!, points[i]!];
      microJoules += ((this.power(a) + this.power(b)) / 2) * (b - a);
    }
    return microJoules / 1000;
  }
}

export interface DeviceHealthOptions {
  /** The tegrastats binary; absent (an absolute path that does not exist, or ENOENT) means no device health. */
  tegrastats: string;
  intervalMs: number;
  /** Alternatives for the board power rail (tegrastats.ts boardPower). */
  energyRails: readonly string[];
  metrics: AgentMetrics;
  log: Logger;
  /** How long to wait before starting tegrastats again after it exited. */
  restartMs?: number;
}

export class DeviceHealth implements HealthSource {
  private child?: ChildProcess;
  private latest?: { sample: TegraSample; at: number };
  private gauges?: DeviceMetrics;
  private readonly meter: EnergyMeter;
  private stopped = false;
  private restartTimer?: NodeJS.Timeout;
  /** Called after each parsed line (tests wait on it). */
  onSample?: (s: TegraSample) => void;

  constructor(private readonly o: DeviceHealthOptions) {
    this.meter = new EnergyMeter(2 * o.intervalMs);
  }

  /** Starts tegrastats when it is there; returns whether it was. */
  start(): boolean {
    const bin = this.o.tegrastats;
    if (isAbsolute(bin) && !existsSync(bin)) {
      this.o.log('info', `device health off: ${bin} not found (tegrastats exists on Jetsons only)`);
      return false;
    }
    this.launch();
    return true;
  }

  private launch(): void {
    const child = spawn(this.o.tegrastats, ['--interval', String(this.o.intervalMs)], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.child = child;
    let errText = '';
    child.stderr!.on('data', (c: Buffer) => (errText = (errText + c.toString()).slice(-400)));
    createInterface({ input: child.stdout! }).on('line', (line) => this.onLine(line));
    child.once('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT')
        this.o.log('info', `device health off: ${this.o.tegrastats} not found (tegrastats exists on Jetsons only)`);
      else this.o.log('warn', `device health: cannot run ${this.o.tegrastats}: ${err.message}`);
      this.child = undefined;
    });
    child.once('exit', (code, signal) => {
      if (this.child !== child) return; // failed to start, or stopped
      this.child = undefined;
      this.forget();
      if (this.stopped) return;
      const restartMs = this.o.restartMs ?? 10_000;
      this.o.log(
        'warn',
        `device health: ${this.o.tegrastats} exited (${signal ?? code})${errText ? `: ${errText.trim()}` : ''}; ` +
          `starting it again in ${restartMs / 1000} s`,
      );
      this.restartTimer = setTimeout(() => this.launch(), restartMs); // stop() clears it
    });
  }

  private onLine(line: string): void {
    const sample = parseTegrastats(line);
    if (!sample) return;
    const at = Date.now();
    this.latest = { sample, at };
    const power = boardPower(sample, this.o.energyRails);
    if (power) this.meter.add(at, power.mW);
    this.gauges ??= this.o.metrics.device();
    this.gauges.update(sample, at);
    this.onSample?.(sample);
  }

  /** A dead tegrastats leaves nothing behind that looks current. */
  private forget(): void {
    this.latest = undefined;
    this.meter.reset(); // the curve must not bridge the time tegrastats was not running
    this.gauges?.clear();
  }

  summary(): HealthSummary | undefined {
    const l = this.latest;
    if (!l || Date.now() - l.at > 3 * this.o.intervalMs + 1000) return undefined;
    const s = l.sample;
    const out: HealthSummary = { sampledUnixMs: l.at };
    if (s.ramUsedMib !== undefined) out.ramUsedMib = s.ramUsedMib;
    if (s.ramTotalMib !== undefined) out.ramTotalMib = s.ramTotalMib;
    if (s.gpuLoadPct !== undefined) out.gpuLoadPct = s.gpuLoadPct;
    if (s.emcLoadPct !== undefined) out.emcLoadPct = s.emcLoadPct;
    const temps = Object.entries(s.temps);
    const hottest = s.temps.tj !== undefined ? ['tj', s.temps.tj] : temps.sort((a, b) => b[1] - a[1])[0];
    if (hottest) [out.tempSensor, out.tempC] = hottest as [string, number];
    const power = boardPower(s, this.o.energyRails);
    if (power) [out.powerRail, out.powerMw] = [power.rail, power.mW];
    return out;
  }

  energyMj(from: number, to: number): number | undefined {
    return this.meter.between(from, to);
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.restartTimer);
    const child = this.child;
    this.child = undefined;
    child?.kill('SIGTERM');
  }
}

/**
 * One line of Jetson's `tegrastats` as numbers. The fields differ per module and JetPack (docs/MQTT.md, "Device health"):
 *   JetPack 6 (Orin Nano/NX): `... EMC_FREQ 15%@204 GR3D_FREQ 0%@[305] ... cpu@48.5C tj@49.3C
 *     VDD_IN 5251mW/8535mW VDD_CPU_GPU_CV 512mW/1944mW VDD_SOC 2720mW/3659mW`
 *   JetPack 5 (AGX Orin): `... EMC_FREQ 0%@2133 GR3D_FREQ 0%@0 GR3D2_FREQ 0%@0 ... CV0@-256C CPU@42.5C
 *     Tboard@32C tj@42.5C VDD_GPU_SOC 2399mW/2399mW VDD_CPU_CV 400mW/400mW VIN_SYS_5V0 4032mW/4032mW NC 0mW/0mW`
 *   older L4T: rails without units (`POM_5V_IN 5336/4970`), frequencies without @ when not root.
 * Every field is optional: what a line does not print stays absent, and a sensor that reads -256C
 * (powered off) or an `NC` (not connected) rail is left out rather than reported.
 */

export interface RailReading {
  /** Instantaneous power, mW. */
  mW: number;
  /** tegrastats' running average since it started, mW. */
  avgMw: number;
}

export interface TegraSample {
  ramUsedMib?: number;
  ramTotalMib?: number;
  swapUsedMib?: number;
  swapTotalMib?: number;
  /** Per core: load in percent and clock in MHz when printed; null for a core that is off. */
  cpus: Array<{ loadPct: number; freqMhz?: number } | null>;
  emcLoadPct?: number;
  emcFreqMhz?: number;
  /** GR3D_FREQ: the integrated GPU's load (percent of its current clock) and clock. */
  gpuLoadPct?: number;
  gpuFreqMhz?: number;
  /** Degrees Celsius by sensor name, lower-cased (JetPack 5 prints CPU@, JetPack 6 cpu@). */
  temps: Record<string, number>;
  /** Power rails by the name tegrastats prints (VDD_IN, VDD_CPU_GPU_CV, VIN_SYS_5V0, ...). */
  rails: Record<string, RailReading>;
}

/** Below this a thermal zone reads "no sensor" (-256C on Orin), not a temperature. */
const COLDEST_REAL_C = -60;

const num = (s: string | undefined): number | undefined => (s === undefined ? undefined : Number(s));

function parseCpus(list: string): TegraSample['cpus'] {
  return list.split(',').map((entry) => {
    const m = /^(\d+)%(?:@(\d+))?$/.exec(entry.trim());
    if (!m) return null; // "off"
    return { loadPct: Number(m[1]), ...(m[2] ? { freqMhz: Number(m[2]) } : {}) };
  });
}

/** The sample in one tegrastats line, or undefined when the line is not one (no RAM field). */
export function parseTegrastats(line: string): TegraSample | undefined {
  const ram = /\bRAM (\d+)\/(\d+)MB\b/.exec(line);
  if (!ram) return undefined;
  const s: TegraSample = { ramUsedMib: Number(ram[1]), ramTotalMib: Number(ram[2]), cpus: [], temps: {}, rails: {} };
  const swap = /\bSWAP (\d+)\/(\d+)MB\b/.exec(line);
  if (swap) [s.swapUsedMib, s.swapTotalMib] = [Number(swap[1]), Number(swap[2])];
  const cpu = /\bCPU \[([^\]]*)\]/.exec(line);
  if (cpu) s.cpus = parseCpus(cpu[1]!);
  const emc = /\bEMC_FREQ (\d+)%(?:@(\d+))?/.exec(line);
  if (emc) {
    s.emcLoadPct = Number(emc[1]);
    if (emc[2]) s.emcFreqMhz = Number(emc[2]);
  }
  // GR3D_FREQ 99%@[612] (JetPack 6), 0%@[305,305] (one clock per GPC), 7%@306, or 0% alone.
  const gpu = /\bGR3D_FREQ (\d+)%(?:@\[?(\d+)[\d,]*\]?)?/.exec(line);
  if (gpu) {
    s.gpuLoadPct = Number(gpu[1]);
    const f = num(gpu[2]);
    if (f !== undefined) s.gpuFreqMhz = f;
  }
  for (const token of line.split(/\s+/)) {
    const t = /^([A-Za-z][A-Za-z0-9_]*)@(-?\d+(?:\.\d+)?)C$/.exec(token);
    if (t && Number(t[2]) > COLDEST_REAL_C) s.temps[t[1]!.toLowerCase()] = Number(t[2]);
  }
  for (const m of line.matchAll(/(?:^|\s)([A-Z][A-Z0-9_]*) (\d+)(?:mW)?\/(\d+)(?:mW)?(?=\s|$)/g)) {
    if (m[1] === 'NC') continue; // a monitor channel with nothing connected
    s.rails[m[1]!] = { mW: Number(m[2]), avgMw: Number(m[3]) };
  }
  return s;
}

/**
 * Board power from one sample by the first alternative whose rails are all printed: `VDD_IN`
 * (Orin Nano/NX input), `POM_5V_IN` (older modules), or a sum such as
 * `VDD_GPU_SOC+VDD_CPU_CV+VIN_SYS_5V0` (AGX Orin prints no input rail). Undefined when none is.
 */
export function boardPower(s: TegraSample, alternatives: readonly string[]): { rail: string; mW: number } | undefined {
  for (const alt of alternatives) {
    const names = alt.split('+');
    if (!names.every((n) => s.rails[n])) continue;
    return { rail: alt, mW: names.reduce((sum, n) => sum + s.rails[n]!.mW, 0) };
  }
  return undefined;
}

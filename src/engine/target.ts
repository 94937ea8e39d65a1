/**
 * Targets: what a TensorRT engine, or a signed bundle, is valid for (docs/ENGINES.md "Targets").
 * A target id has three segments, lower case:
 *
 *   <module>/<platform>/<runtime>      e.g. orin-nano-8gb/jp6.2/trt10.3, x86_64/none/cpu
 *
 *   module    a Jetson module (orin-nano-8gb, orin-nx-16gb, agx-orin-64gb, ...: the SKU in the
 *             device tree, which fixes the GPU and so the SM); elsewhere the CPU architecture
 *             (x86_64, aarch64), plus -sm<NN> when TensorRT runs on a GPU (x86_64-sm89)
 *   platform  jp<major>.<minor>: the JetPack release derived from the L4T release in
 *             /etc/nv_tegra_release; l4t<major>.<minor> for an L4T release the table below does
 *             not know (never a guess); none off Jetson
 *   runtime   trt<major>.<minor>: the TensorRT library present, with the addon built for it;
 *             cpu otherwise (ONNX Runtime on the CPU: no engine can run)
 *
 * Patterns (a bundle's compatibility section, later the engine cache) are `*` (any target) or three
 * segments in which `*` stands for any run of characters within the segment:
 * `orin-nano-*\/jp6.*\/trt10.3`. Detection reads files under an injectable root (a fake one in
 * tests) and the addon's capabilities (the GPU probe, the TensorRT version); see detectTarget.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { ErrorCodes, SetokimError } from '../errors.js';
import { capabilities, type Capabilities } from './native.js';

const SEGMENT = /^[a-z0-9][a-z0-9._-]*$/;
const PATTERN_SEGMENT = /^[a-z0-9._*-]+$/;

/** A target id: `<module>/<platform>/<runtime>`. */
export const TargetId = z
  .string()
  .max(128)
  .refine(
    (id) => id.split('/').length === 3 && id.split('/').every((s) => SEGMENT.test(s)),
    'a target is <module>/<platform>/<runtime>, e.g. orin-nano-8gb/jp6.2/trt10.3 (lower case)',
  );

/** A target pattern: `*`, or three segments where `*` matches within one segment. */
export const TargetPattern = z
  .string()
  .max(128)
  .refine(
    (p) => p === '*' || (p.split('/').length === 3 && p.split('/').every((s) => PATTERN_SEGMENT.test(s))),
    'a target pattern is * or <module>/<platform>/<runtime> with * inside a segment, e.g. orin-nano-*/jp6.*/trt10.3',
  );

/** Whether a target id matches a pattern (both as the schemas above allow). */
export function matchTarget(pattern: string, id: string): boolean {
  if (pattern === '*') return true;
  const ps = pattern.split('/');
  const ids = id.split('/');
  if (ps.length !== 3 || ids.length !== 3) return false;
  return ps.every((p, i) => new RegExp(`^${p.split('*').map(escapeRegExp).join('[^/]*')}$`).test(ids[i]!));
}

/** The patterns of `patterns` that `id` matches (empty: none does). */
export const matchingPatterns = (patterns: readonly string[], id: string): string[] =>
  patterns.filter((p) => matchTarget(p, id));

const escapeRegExp = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** What detectTarget found, with the evidence behind each segment. */
export interface Target {
  /** `<module>/<platform>/<runtime>`. */
  id: string;
  module: string;
  platform: string;
  runtime: string;
  /** CPU architecture: x86_64, aarch64, or Node's name for another. */
  arch: string;
  /** Compute capability ("8.7") of the GPU: the probe's, else the Jetson chip's; null without one. */
  sm: string | null;
  /** The TensorRT library version ("10.3.0") when the runtime is TensorRT, else null. */
  tensorrt: string | null;
  /** What identified a Jetson, when this is one. */
  jetson: JetsonInfo | null;
}

export interface JetsonInfo {
  /** /proc/device-tree/model, without its trailing NUL. */
  model: string;
  /** /proc/device-tree/compatible, split at its NULs. */
  compatible: string[];
  /** The SoC from `compatible` (tegra234: Orin, tegra194: Xavier, tegra264: Thor), or null. */
  chip: string | null;
  /** The L4T release from /etc/nv_tegra_release ("36.4.3"), or null when absent. */
  l4t: string | null;
  /** The JetPack release for it ("6.2"), or null when the table does not know it. */
  jetpack: string | null;
}

/**
 * Module SKUs (the `pNNNN-NNNN` part numbers in the device tree's `compatible`) and their names.
 * From NVIDIA's module part numbers (the L4T device-tree names, tegra234-p3768-0000+p3767-0005 ...).
 */
const MODULES: Record<string, string> = {
  'p3767-0000': 'orin-nx-16gb',
  'p3767-0001': 'orin-nx-8gb',
  'p3767-0003': 'orin-nano-8gb',
  'p3767-0004': 'orin-nano-4gb',
  'p3767-0005': 'orin-nano-8gb', // the developer kit's module (SD card)
  'p3701-0000': 'agx-orin-32gb', // the first developer kits'
  'p3701-0004': 'agx-orin-32gb',
  'p3701-0005': 'agx-orin-64gb',
  'p3701-0008': 'agx-orin-industrial-64gb',
  'p3668-0000': 'xavier-nx-8gb',
  'p3668-0001': 'xavier-nx-8gb',
  'p3668-0003': 'xavier-nx-16gb',
  'p2888-0001': 'agx-xavier-16gb',
  'p2888-0004': 'agx-xavier-32gb',
  'p2888-0005': 'agx-xavier-64gb',
  'p2888-0008': 'agx-xavier-industrial-32gb',
  'p3834-0008': 'agx-thor-128gb',
};

/** Module families by the words of the device-tree model, for a SKU not in MODULES (size from memory). */
const FAMILIES: Array<[RegExp, string]> = [
  [/AGX Orin/i, 'agx-orin'],
  [/Orin NX/i, 'orin-nx'],
  [/Orin Nano/i, 'orin-nano'],
  [/AGX Xavier/i, 'agx-xavier'],
  [/Xavier NX/i, 'xavier-nx'],
  [/Thor/i, 'agx-thor'],
];

/** Compute capability per Jetson SoC, for when the GPU probe is not available (no CUDA in this build). */
const CHIP_SM: Record<string, string> = { tegra194: '7.2', tegra234: '8.7', tegra264: '11.0' };

/** L4T release -> JetPack release, from NVIDIA's release notes. An L4T release not here stays l4t<x.y>. */
const JETPACK: Record<string, string> = {
  '35.1.0': '5.0.2',
  '35.2.1': '5.1',
  '35.3.1': '5.1.1',
  '35.4.1': '5.1.2',
  '35.5.0': '5.1.3',
  '35.6.0': '5.1.4',
  '35.6.1': '5.1.5',
  '35.6.2': '5.1.5',
  '36.2.0': '6.0', // developer preview
  '36.3.0': '6.0',
  '36.4.0': '6.1',
  '36.4.3': '6.2',
  '36.4.4': '6.2.1',
  '36.4.7': '6.2.1',
  '38.2.0': '7.0',
  '38.2.2': '7.0',
};

/** The L4T release in /etc/nv_tegra_release ("# R36 (release), REVISION: 4.3, ..." -> "36.4.3"), or null. */
export function parseNvTegraRelease(text: string): string | null {
  const m = /^#\s*R(\d+)\s*\(release\),\s*REVISION:\s*(\d+)\.(\d+)/m.exec(text);
  return m ? `${Number(m[1])}.${Number(m[2])}.${Number(m[3])}` : null;
}

/** The JetPack release of an L4T release ("36.4.3" -> "6.2"), or null when not in the table. */
export const jetpackOf = (l4t: string): string | null => JETPACK[l4t] ?? null;

/** /proc/device-tree/compatible (NUL-separated) as its strings. */
export const parseCompatible = (raw: string): string[] =>
  raw
    .split('\0')
    .map((s) => s.trim())
    .filter(Boolean);

/**
 * The module segment of a Jetson: its SKU from `compatible` when known; else the family named by
 * `model` with the memory rounded up to 4/8/16/32/64 GB; else jetson-<chip>.
 */
export function jetsonModule(model: string, compatible: string[], memTotalBytes: number | null): string {
  for (const c of compatible) {
    for (const sku of c.match(/p\d{4}-\d{4}/g) ?? []) if (MODULES[sku]) return MODULES[sku];
  }
  const family = FAMILIES.find(([re]) => re.test(model))?.[1];
  if (family && memTotalBytes) {
    const gb = [4, 8, 16, 32, 64, 128].find((g) => memTotalBytes <= g * 2 ** 30) ?? 128;
    return `${family}-${gb}gb`;
  }
  return family ?? `jetson-${chipOf(compatible) ?? 'unknown'}`;
}

const chipOf = (compatible: string[]): string | null =>
  compatible.map((c) => /^nvidia,(tegra\d+)$/.exec(c)?.[1]).find(Boolean) ?? null;

const majorMinor = (version: string): string => version.split('.').slice(0, 2).join('.');
const smDigits = (sm: string): string => sm.replace('.', '');

/** Where detectTarget looks; every field defaults to this machine. */
export interface DetectTargetOptions {
  /** Where /proc/device-tree, /etc/nv_tegra_release and /proc/meminfo are read (default `/`). */
  root?: string;
  /** The addon's capabilities (default: probed now; null: as without the addon: no GPU, no TensorRT). */
  capabilities?: Capabilities | null;
  /** Node's process.arch (default: this process's). */
  arch?: string;
}

async function readText(path: string): Promise<string | null> {
  try {
    return await readFile(path, 'utf8');
  } catch {
    return null; // absent off Jetson (or unreadable): the segment falls back, documented above
  }
}

function probeCapabilities(): Capabilities | null {
  try {
    return capabilities();
  } catch (err) {
    if (err instanceof SetokimError && err.code === ErrorCodes.NATIVE_MISSING) return null;
    throw err;
  }
}

/** The files detection reads, as text (null: absent). */
interface BoardFiles {
  model: string | null;
  compatible: string | null;
  nvTegraRelease: string | null;
  meminfo: string | null;
}

const BOARD_FILES: Record<keyof BoardFiles, string> = {
  model: 'proc/device-tree/model',
  compatible: 'proc/device-tree/compatible',
  nvTegraRelease: 'etc/nv_tegra_release',
  meminfo: 'proc/meminfo',
};

async function readBoardFiles(root: string): Promise<BoardFiles> {
  const keys = Object.keys(BOARD_FILES) as (keyof BoardFiles)[];
  const texts = await Promise.all(keys.map((k) => readText(join(root, BOARD_FILES[k]))));
  return Object.fromEntries(keys.map((k, i) => [k, texts[i]])) as unknown as BoardFiles;
}

/** What the addon says about the runtime: the TensorRT version (only when compiled in) and the GPU's SM. */
function runtimeOf(caps: Capabilities | null): { runtime: string; tensorrt: string | null; sm: string | null } {
  const tensorrt = caps?.compiled.tensorrt ? caps.present.tensorrtLibraryVersion : null;
  const sm = caps?.present.gpus[0]?.computeCapability ?? null;
  return { runtime: tensorrt ? `trt${majorMinor(tensorrt)}` : 'cpu', tensorrt, sm };
}

/** The Jetson facts in the board files, or null when this is no Jetson. */
function jetsonOf(files: BoardFiles): JetsonInfo | null {
  const compatible = parseCompatible(files.compatible ?? '');
  const model = (files.model ?? '').replace(/\0+$/, '').trim();
  const tegra = compatible.some((c) => c.startsWith('nvidia,tegra'));
  if (!tegra && !/jetson/i.test(model) && files.nvTegraRelease === null) return null;
  const l4t = files.nvTegraRelease === null ? null : parseNvTegraRelease(files.nvTegraRelease);
  return { model, compatible, chip: chipOf(compatible), l4t, jetpack: l4t ? jetpackOf(l4t) : null };
}

const ARCH: Record<string, string> = { x64: 'x86_64', arm64: 'aarch64' };

/** This device's target, from the device tree, the L4T release, the GPU probe and the TensorRT library. */
export async function detectTarget(o: DetectTargetOptions = {}): Promise<Target> {
  const files = await readBoardFiles(o.root ?? '/');
  const caps = o.capabilities === undefined ? probeCapabilities() : o.capabilities;
  const { runtime, tensorrt, sm: probed } = runtimeOf(caps);
  const nodeArch = o.arch ?? process.arch;
  const arch = ARCH[nodeArch] ?? nodeArch;
  const jetson = jetsonOf(files);
  if (!jetson) {
    const module = tensorrt && probed ? `${arch}-sm${smDigits(probed)}` : arch;
    const id = `${module}/none/${runtime}`;
    return { id, module, platform: 'none', runtime, arch, sm: probed, tensorrt, jetson: null };
  }
  const memKb = /^MemTotal:\s+(\d+)\s*kB/m.exec(files.meminfo ?? '')?.[1];
  const module = jetsonModule(jetson.model, jetson.compatible, memKb ? Number(memKb) * 1024 : null);
  const { l4t, chip } = jetson;
  const platform = l4t ? platformOf(l4t) : 'none';
  const sm = probed ?? (chip ? (CHIP_SM[chip] ?? null) : null);
  return { id: `${module}/${platform}/${runtime}`, module, platform, runtime, arch, sm, tensorrt, jetson };
}

/** The SM a target's module implies ("8.7" for any Orin, "8.9" for x86_64-sm89), or null when it names none. */
export function moduleSm(module: string): string | null {
  const sm = /-sm(\d+)(\d)$/.exec(module);
  if (sm) return `${sm[1]}.${sm[2]}`;
  if (/orin/.test(module)) return CHIP_SM.tegra234!;
  if (/xavier/.test(module)) return CHIP_SM.tegra194!;
  if (/thor/.test(module)) return CHIP_SM.tegra264!;
  return null;
}

/** A target id's platform segment for an L4T release ("36.4.3" -> "jp6.2"; unknown: "l4t36.4"). */
export function platformOf(l4t: string): string {
  const jetpack = jetpackOf(l4t);
  return jetpack ? `jp${majorMinor(jetpack)}` : `l4t${majorMinor(l4t)}`;
}

/** One line for logs and `setokim doctor`: the id, then what it rests on. */
export function describeTarget(t: Target): string {
  const j = t.jetson;
  const release = j ? `${j.l4t ? `, L4T ${j.l4t}` : ''}${j.jetpack ? ` (JetPack ${j.jetpack})` : ''}` : '';
  const board = j ? `${j.model || 'Jetson'}${release}` : t.arch;
  const parts = [board];
  if (t.sm) parts.push(`sm ${t.sm}`);
  parts.push(t.tensorrt ? `TensorRT ${t.tensorrt}` : 'no TensorRT');
  return `${t.id} (${parts.join(', ')})`;
}

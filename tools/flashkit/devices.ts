/**
 * devices.csv for `flash-kit --devices`: one board per line with its identity and secrets.
 *
 *   device,fleet,broker,cert,key
 *   cam-01,plant-a,mqtts://broker.plant-a:8883,certs/cam-01.pem,certs/cam-01.key
 *   cam-02,plant-a,mqtts://broker.plant-a:8883,,
 *
 * The header names the columns (cert and key may be left out); blank lines and lines starting with
 * # are skipped; relative paths are relative to the CSV file. A device id becomes a directory of
 * the kit and an MQTT topic level, so it must be one safe name; ids are unique.
 */
import { readFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { z } from 'zod';
import { ErrorCodes, SetokimError } from '../../src/errors.js';
import { levelName } from '../../src/mqtt/topics.js';

const COLUMNS = ['device', 'fleet', 'broker', 'cert', 'key'] as const;
const REQUIRED = ['device', 'fleet', 'broker'] as const;

/** A topic level that is also a safe file name: no "." or "..", no leading dot or dash. */
const deviceId = levelName.regex(/^[A-Za-z0-9]/, 'must start with a letter or digit (it names a directory of the kit)');
const optionalPath = z.string().transform((s) => s || undefined);

const DeviceRow = z
  .strictObject({
    device: deviceId,
    fleet: levelName,
    broker: z
      .string()
      .regex(/^(mqtts?|wss?|tcp|ssl):\/\/[^\s]+$/, 'must be a broker URL (mqtt://, mqtts://, ws://, wss://)'),
    cert: optionalPath,
    key: optionalPath,
  })
  .refine((r) => !r.cert === !r.key, { message: 'cert and key go together (both or neither)', path: ['cert'] });

export type DeviceEntry = z.output<typeof DeviceRow> & { line: number };

function refuse(file: string, message: string): never {
  throw new SetokimError(ErrorCodes.BAD_DEVICE_LIST, `${file}: ${message}`);
}

export async function readDevicesCsv(file: string): Promise<DeviceEntry[]> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    return refuse(file, `cannot read it: ${(err as Error).message}`);
  }
  const lines = text
    .split(/\r?\n/)
    .map((l, i) => ({ n: i + 1, text: l.trim() }))
    .filter((l) => l.text && !l.text.startsWith('#'));
  if (!lines.length) refuse(file, 'no header and no devices (the header is: device,fleet,broker,cert,key)');
  const header = lines[0]!.text.split(',').map((c) => c.trim());
  const unknown = header.filter((c) => !(COLUMNS as readonly string[]).includes(c));
  const missing = REQUIRED.filter((c) => !header.includes(c));
  if (unknown.length || missing.length || new Set(header).size !== header.length) {
    refuse(
      file,
      `line ${lines[0]!.n}: the header must name the columns ${COLUMNS.join(',')} (cert and key may be left out)` +
        (unknown.length ? `; unknown: ${unknown.join(', ')}` : '') +
        (missing.length ? `; missing: ${missing.join(', ')}` : ''),
    );
  }
  const seen = new Map<string, number>();
  const out: DeviceEntry[] = [];
  for (const l of lines.slice(1)) {
    if (l.text.includes('"')) refuse(file, `line ${l.n}: quotes are not read; values cannot hold commas`);
    const cells = l.text.split(',').map((c) => c.trim());
    if (cells.length !== header.length)
      refuse(file, `line ${l.n}: ${cells.length} values for ${header.length} columns (${header.join(',')})`);
    const row = Object.fromEntries(COLUMNS.map((c) => [c, cells[header.indexOf(c)] ?? '']));
    const parsed = DeviceRow.safeParse(row);
    if (!parsed.success) {
      const i = parsed.error.issues[0]!;
      const value = row[i.path[0] as string];
      refuse(
        file,
        `line ${l.n}: ${i.path.join('.') || 'row'}${value ? ` ${JSON.stringify(value)}` : ''}: ${i.message}`,
      );
    }
    const first = seen.get(parsed.data.device.toLowerCase());
    if (first !== undefined)
      refuse(
        file,
        `line ${l.n}: device ${parsed.data.device} is already on line ${first} (ids are unique, whatever their case: ` +
          `each names a directory and an MQTT client)`,
      );
    seen.set(parsed.data.device.toLowerCase(), l.n);
    const base = dirname(resolve(file));
    out.push({
      ...parsed.data,
      cert: parsed.data.cert && resolve(base, parsed.data.cert),
      key: parsed.data.key && resolve(base, parsed.data.key),
      line: l.n,
    });
  }
  if (!out.length) refuse(file, 'no devices after the header');
  return out;
}

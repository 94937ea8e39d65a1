/**
 * A listening sd_notify socket, as systemd offers one to a `Type=notify` service: an AF_UNIX
 * datagram socket (Node cannot bind one, so python3 does) that hands every datagram it receives
 * to the test, with the time it arrived. `abstract` binds "@name" in the abstract namespace.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

const RECEIVER = `
import json, socket, sys, time
addr = sys.argv[1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(("\\0" + addr[1:]) if addr.startswith("@") else addr)
print(json.dumps({"listening": addr}), flush=True)
while True:
    data = s.recv(4096)
    print(json.dumps({"at": time.time() * 1000, "state": data.decode()}), flush=True)
`;

export interface Notification {
  at: number;
  state: string;
}

export interface NotifySocket {
  /** What NOTIFY_SOCKET is set to. */
  address: string;
  received: Notification[];
  /** Resolves with the first notification (from `from` on) whose state matches. */
  next(pattern: RegExp, from?: number): Promise<Notification>;
  close(): void;
}

export async function listenNotify(o: { abstract?: boolean } = {}): Promise<NotifySocket> {
  const dir = mkdtempSync(join(tmpdir(), 'setokim-notify-'));
  const address = o.abstract ? `@setokim-test-${process.pid}-${Date.now()}` : join(dir, 'notify.sock');
  const child = spawn('python3', ['-c', RECEIVER, address], { stdio: ['ignore', 'pipe', 'inherit'] });
  const received: Notification[] = [];
  const waiters: Array<() => void> = [];
  const lines = createInterface({ input: child.stdout! });
  await new Promise<void>((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (code) => reject(new Error(`the notify receiver exited with ${code}`)));
    lines.once('line', () => resolve());
  });
  lines.on('line', (line) => {
    received.push(JSON.parse(line) as Notification);
    for (const w of waiters.splice(0)) w();
  });
  return {
    address,
    received,
    next(pattern, from = 0) {
      return new Promise((resolve) => {
        const check = (): void => {
          const hit = received.slice(from).find((n) => pattern.test(n.state));
          if (hit) resolve(hit);
          else waiters.push(check);
        };
        check();
      });
    },
    close() {
      child.kill('SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

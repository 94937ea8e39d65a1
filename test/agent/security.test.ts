/**
 * The agent on a locked-down mosquitto: mqtts with a private CA and client certificates, user
 * names and passwords; wrong credentials stop start() with BAD_CONFIG instead of retrying forever.
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { connect } from 'node:net';
import { join } from 'node:path';
import t from 'tap';
import { Agent } from '../../src/agent/agent.js';
import { QueryClient, newQueryId } from '../../src/agent/client.js';
import { parseAgentConfig } from '../../src/agent/config.js';
import { SetokimError } from '../../src/errors.js';
import { mosquittoPath, startMosquitto } from '../helpers/mosquitto.js';
import { collect } from './brokers.js';
import { StubPipeline, samplePng } from './stub-pipeline.js';

/** A throwaway CA, a server certificate for 127.0.0.1 and a client certificate, all signed by it. */
function makePki(
  dir: string,
): Record<'ca' | 'caKey' | 'serverCert' | 'serverKey' | 'clientCert' | 'clientKey', string> {
  const f = (n: string): string => join(dir, n);
  const ssl = (...args: string[]): void => void execFileSync('openssl', args, { stdio: 'ignore' });
  ssl(
    'req',
    '-x509',
    '-newkey',
    'rsa:2048',
    '-nodes',
    '-keyout',
    f('ca.key'),
    '-out',
    f('ca.pem'),
    '-days',
    '2',
    '-subj',
    '/CN=setokim test CA',
  );
  writeFileSync(f('san.ext'), 'subjectAltName=IP:127.0.0.1\n');
  for (const [name, cn] of [
    ['server', '127.0.0.1'],
    ['client', 'cam-1'],
  ]) {
    ssl(
      'req',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-keyout',
      f(`${name}.key`),
      '-out',
      f(`${name}.csr`),
      '-subj',
      `/CN=${cn}`,
    );
    ssl(
      'x509',
      '-req',
      '-in',
      f(`${name}.csr`),
      '-CA',
      f('ca.pem'),
      '-CAkey',
      f('ca.key'),
      '-CAcreateserial',
      '-out',
      f(`${name}.pem`),
      '-days',
      '2',
      ...(name === 'server' ? ['-extfile', f('san.ext')] : []),
    );
  }
  chmodSync(dir, 0o755); // mosquitto, started as root, reads them as its own user
  for (const n of ['ca.pem', 'server.pem', 'server.key']) chmodSync(f(n), 0o644);
  return {
    ca: f('ca.pem'),
    caKey: f('ca.key'),
    serverCert: f('server.pem'),
    serverKey: f('server.key'),
    clientCert: f('client.pem'),
    clientKey: f('client.key'),
  };
}

if (!mosquittoPath()) {
  t.plan(0, 'mosquitto is not installed (apt-get install -y mosquitto)');
} else {
  const dir = mkdtempSync(join(tmpdir(), 'setokim-pki-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const pki = makePki(dir);
  const base = (url: string, broker: Record<string, unknown>) =>
    parseAgentConfig({
      fleet: 'sec',
      device: 'cam-1',
      models: 'stub',
      metrics: { enabled: false },
      broker: { url, reconnectMinMs: 50, ...broker },
    });

  t.test('mqtts with the CA, a client certificate and key, and a password', async (t) => {
    const broker = await startMosquitto({
      tls: { ca: pki.ca, cert: pki.serverCert, key: pki.serverKey, requireCertificate: true },
      users: { 'cam-1': 'right', viewer: 'pw' },
    });
    t.teardown(() => broker.stop());
    t.match(broker.url, /^mqtts:/);
    const agent = new Agent({
      config: base(broker.url, {
        ca: pki.ca,
        cert: pki.clientCert,
        key: pki.clientKey,
        username: 'cam-1',
        password: 'right',
      }),
      pipeline: new StubPipeline(),
    });
    await agent.start();
    t.teardown(() => agent.stop(0));
    const client = await QueryClient.connect({
      url: broker.url,
      ca: readFileSync(pki.ca),
      cert: readFileSync(pki.clientCert),
      key: readFileSync(pki.clientKey),
      username: 'viewer',
      password: 'pw',
    });
    t.teardown(() => client.close());
    const events = await collect(
      client.query({ fleet: 'sec', device: 'cam-1' }, { id: newQueryId(), task: 'describe', image: await samplePng() }),
    );
    t.equal(events.at(-1)?.type, 'done', 'served over TLS with client certificates');

    const wrong = new Agent({
      config: base(broker.url, {
        ca: pki.ca,
        cert: pki.clientCert,
        key: pki.clientKey,
        username: 'cam-1',
        password: 'wrong',
        clientId: 'wrong-pw',
      }),
      pipeline: new StubPipeline(),
    });
    await t.rejects(
      wrong.start(),
      { code: 'BAD_CONFIG', message: /refused the credentials/ },
      'a wrong password stops start()',
    );
    await wrong.stop(0);
  });

  t.test('a missing certificate file is BAD_CONFIG naming it', async (t) => {
    const agent = new Agent({
      config: base('mqtts://127.0.0.1:1', { ca: join(dir, 'nope.pem') }),
      pipeline: new StubPipeline(),
    });
    const err = await agent.start().then(
      () => undefined,
      (e: unknown) => e,
    );
    t.ok(
      err instanceof SetokimError && err.code === 'BAD_CONFIG' && /CA certificate .*nope\.pem/.test(err.message),
      String(err),
    );
    await agent.stop(0);
  });

  t.test('a failed start closes the metrics endpoint it opened', async (t) => {
    const config = parseAgentConfig({
      fleet: 'sec',
      device: 'cam-1',
      models: 'stub',
      metrics: { port: 0 },
      broker: { url: 'mqtts://127.0.0.1:1', ca: join(dir, 'nope.pem') },
    });
    const agent = new Agent({ config, pipeline: new StubPipeline() });
    await t.rejects(agent.start(), { code: 'BAD_CONFIG' });
    t.ok(agent.metricsPort, 'metrics had been listening');
    const refused = await new Promise<string | undefined>((resolve) => {
      const socket = connect(agent.metricsPort!, '127.0.0.1');
      socket.once('connect', () => (socket.destroy(), resolve(undefined)));
      socket.once('error', (e: NodeJS.ErrnoException) => resolve(e.code));
    });
    t.equal(refused, 'ECONNREFUSED', 'nothing keeps the process alive after the error');
  });
}

/**
 * Test child: installs a bundle and kills itself with SIGKILL (no cleanup, no finally blocks,
 * as a power loss) right after the named step reached the disk, or halfway through unpacking.
 * Usage: node --import tsx crash-child.ts BUNDLE STORE PUBKEY STEP
 */
import { installBundle, loadPublicKey } from '../../src/fleet/index.js';

const [bundle, store, pub, at] = process.argv.slice(2) as [string, string, string, string];
const die = () => process.kill(process.pid, 'SIGKILL');
await installBundle({
  bundle,
  store,
  pubkey: await loadPublicKey(pub),
  onStep: (s) => {
    if (s === at) die();
  },
  onProgress: (done, total) => {
    if (at === 'unpacking' && done > total / 2) die();
  },
});
process.stdout.write('finished without a crash\n');

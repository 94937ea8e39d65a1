/**
 * Ed25519 signing keys as PEM files (private: PKCS#8, public: SPKI). The private key signs
 * bundles on the build machine and never travels; devices hold only the public key.
 */
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ErrorCodes, SetokimError } from '../errors.js';

export const PRIVATE_KEY_FILE = 'bundle-signing.key.pem';
export const PUBLIC_KEY_FILE = 'bundle-signing.pub.pem';

/** First 16 hex digits of sha256 over the SPKI DER: names a key in manifests and errors. */
export function keyIdOf(key: KeyObject): string {
  const pub = key.type === 'private' ? createPublicKey(key) : key;
  return createHash('sha256')
    .update(pub.export({ type: 'spki', format: 'der' }))
    .digest('hex')
    .slice(0, 16);
}

/** Writes a new key pair into `dir` (the private key readable by its owner only); refuses to overwrite. */
export async function generateKeys(dir: string): Promise<{ privatePath: string; publicPath: string; keyId: string }> {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  await mkdir(dir, { recursive: true });
  const privatePath = join(dir, PRIVATE_KEY_FILE);
  const publicPath = join(dir, PUBLIC_KEY_FILE);
  try {
    await writeFile(privatePath, privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600, flag: 'wx' });
    await writeFile(publicPath, publicKey.export({ type: 'spki', format: 'pem' }), { flag: 'wx' });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST')
      throw new SetokimError(
        ErrorCodes.BAD_ARGUMENT,
        `${dir} already holds a bundle signing key; choose another --out (keys are never overwritten)`,
        { cause: err },
      );
    throw err;
  }
  return { privatePath, publicPath, keyId: keyIdOf(publicKey) };
}

async function readPem(path: string, what: string): Promise<string> {
  try {
    return await readFile(path, 'utf8');
  } catch (err) {
    throw new SetokimError(ErrorCodes.BAD_ARGUMENT, `cannot read the ${what} ${path}: ${(err as Error).message}`, {
      cause: err,
    });
  }
}

function requireEd25519(key: KeyObject, path: string): KeyObject {
  if (key.asymmetricKeyType !== 'ed25519')
    throw new SetokimError(
      ErrorCodes.BAD_ARGUMENT,
      `${path} is a ${key.asymmetricKeyType} key; bundles are signed with Ed25519 (make one with \`setokim bundle keygen\`)`,
    );
  return key;
}

export async function loadPrivateKey(path: string): Promise<KeyObject> {
  const pem = await readPem(path, 'private key');
  try {
    return requireEd25519(createPrivateKey(pem), path);
  } catch (err) {
    if (err instanceof SetokimError) throw err;
    throw new SetokimError(
      ErrorCodes.BAD_ARGUMENT,
      `${path} is not a PEM private key (${(err as Error).message}); use the .key.pem from \`setokim bundle keygen\``,
      { cause: err },
    );
  }
}

export async function loadPublicKey(path: string): Promise<KeyObject> {
  const pem = await readPem(path, 'public key');
  let key: KeyObject;
  try {
    key = createPublicKey(pem);
  } catch (err) {
    throw new SetokimError(
      ErrorCodes.BAD_ARGUMENT,
      `${path} is not a PEM public key (${(err as Error).message}); use the .pub.pem from \`setokim bundle keygen\``,
      { cause: err },
    );
  }
  // createPublicKey accepts a private PEM too (and derives its public half); a device must not hold one.
  if (/PRIVATE KEY/.test(pem))
    throw new SetokimError(
      ErrorCodes.BAD_ARGUMENT,
      `${path} holds a private key; give devices the public key only (.pub.pem)`,
    );
  return requireEd25519(key, path);
}

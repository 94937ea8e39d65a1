import t from 'tap';
import { redactUrl } from '../src/redact.js';

t.test('user info, query strings and fragments never reach a log or a retained message', async (t) => {
  t.equal(redactUrl('mqtt://cam1:s3cret@broker.example:1883'), 'mqtt://***@broker.example:1883');
  t.equal(redactUrl('mqtts://:onlypass@broker:8883/'), 'mqtts://broker:8883/');
  t.equal(
    redactUrl('https://cdn.example/r2.bundle?X-Amz-Signature=abc&X-Amz-Credential=k#frag'),
    'https://cdn.example/r2.bundle?<redacted>',
  );
  t.equal(redactUrl('https://cdn.example/r2.bundle'), 'https://cdn.example/r2.bundle');
  t.equal(redactUrl('not a url'), '<unparsable URL>');
  t.notMatch(redactUrl('http://u:p@h/x?token=t'), /token|:p@|\bt$/);
});

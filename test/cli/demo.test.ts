/** The README's main job: `img demo` runs every step and exits 0, leaving no temp directory behind. */
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import { test } from 'node:test';
import { img } from '../helpers';

test('img demo runs end to end', () => {
  const before = new Set(fs.readdirSync(os.tmpdir()).filter((n) => n.startsWith('img-demo-')));
  const r = img('demo');
  assert.equal(r.status, 0, r.stdout + r.stderr);
  assert.match(r.stdout, /Images are identical\./);
  assert.match(r.stdout, /img serve drained and exited \(0\)/);
  assert.match(r.stdout, /Hello from inside the guest/);
  assert.match(r.stdout, /\nDone\.\n/);
  const left = fs.readdirSync(os.tmpdir()).filter((n) => n.startsWith('img-demo-') && !before.has(n));
  assert.deepEqual(left, []);
});

/**
 * TEMPORARY stand-in for src/runner/cpio.ts and src/runner/modules.ts (the lead's toolkit,
 * contracts.md §2) until they land on main; same signatures, replaced by imports at the merge.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

export class CpioWriter {
  private parts: Buffer[] = [];
  private ino = 1;

  private entry(name: string, mode: number, data: Uint8Array, rdevMajor = 0, rdevMinor = 0): void {
    const nameBytes = Buffer.from(name + '\0');
    const fields = [this.ino++, mode, 0, 0, 1, 0, data.length, 0, 0, rdevMajor, rdevMinor, nameBytes.length, 0];
    const header = '070701' + fields.map((f) => f.toString(16).padStart(8, '0')).join('');
    const pad4 = (n: number) => Buffer.alloc((4 - (n % 4)) % 4);
    this.parts.push(Buffer.from(header, 'ascii'), nameBytes, pad4(110 + nameBytes.length), Buffer.from(data), pad4(data.length));
  }
  dir(p: string, mode = 0o755): void { this.entry(p, 0o040000 | mode, Buffer.alloc(0)); }
  file(p: string, data: Uint8Array, mode = 0o644): void { this.entry(p, 0o100000 | mode, data); }
  symlink(p: string, target: string): void { this.entry(p, 0o120777, Buffer.from(target)); }
  node(p: string, kind: 'c' | 'b', major: number, minor: number, mode = 0o600): void {
    this.entry(p, (kind === 'c' ? 0o020000 : 0o060000) | mode, Buffer.alloc(0), major, minor);
  }
  finish(): Buffer {
    this.entry('TRAILER!!!', 0, Buffer.alloc(0));
    return Buffer.concat(this.parts);
  }
}

export function resolveModules(release: string, names: string[], root = '/lib/modules'): { name: string; path: string }[] {
  const dir = path.join(root, release);
  const deps = new Map<string, string[]>();
  for (const line of fs.readFileSync(path.join(dir, 'modules.dep'), 'utf8').split('\n')) {
    const [mod, rest] = line.split(':');
    if (rest === undefined) continue;
    deps.set(path.basename(mod).replace(/\.ko.*$/, '').replace(/-/g, '_'), [mod, ...rest.trim().split(/\s+/).filter(Boolean)]);
  }
  const out: { name: string; path: string }[] = [];
  const seen = new Set<string>();
  const visit = (name: string) => {
    const key = name.replace(/-/g, '_');
    if (seen.has(key)) return;
    seen.add(key);
    const d = deps.get(key);
    if (!d) throw new Error(`unknown module ${name}`);
    for (const dep of d.slice(1).reverse()) visit(path.basename(dep).replace(/\.ko.*$/, ''));
    out.push({ name: key, path: path.join(dir, d[0]) });
  };
  names.forEach(visit);
  return out;
}

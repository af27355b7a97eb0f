/**
 * Kernel modules an initramfs must carry, resolved the way modprobe does: hard dependencies
 * from modules.dep, "pre:" soft dependencies from modules.softdep (names or aliases, looked
 * up in modules.alias), modules and aliases built into the kernel (modules.builtin,
 * modules.builtin.modinfo) skipped. The result lists each module once, dependencies before
 * the modules that need them: insmod order. Unlike kmod, which honours only the first
 * softdep line of a module, every line is followed: a superset, so the filesystem finds
 * the checksum drivers it may ask for later.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ImageError } from '../block/errors';

export interface KernelModule {
  /** Module name with '-' written '_', as the kernel names it. */
  name: string;
  /** Absolute path of the .ko (possibly .ko.xz / .ko.zst: the caller must unpack those). */
  path: string;
}

const norm = (name: string): string => name.replace(/-/g, '_');
const moduleName = (rel: string): string => norm(path.basename(rel).replace(/\.ko(\.(xz|zst|gz))?$/, ''));

interface ModuleIndex {
  dir: string;
  deps: Map<string, { rel: string; deps: string[] }>;
  builtin: Set<string>;
  builtinAliases: Set<string>;
  softPre: Map<string, string[]>;
  aliases: Map<string, string[]>;
}

function readLines(file: string, required: boolean): string[] {
  try {
    return fs.readFileSync(file, 'utf8').split('\n');
  } catch (err) {
    if (!required && (err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw new ImageError('NOT_FOUND', `cannot read ${file}: ${(err as Error).message}`, { file, cause: err });
  }
}

function loadIndex(dir: string): ModuleIndex {
  const deps = new Map<string, { rel: string; deps: string[] }>();
  for (const line of readLines(path.join(dir, 'modules.dep'), true)) {
    const colon = line.indexOf(':');
    if (colon <= 0) continue;
    const rel = line.slice(0, colon);
    const needs = line.slice(colon + 1).trim().split(/\s+/).filter(Boolean);
    deps.set(moduleName(rel), { rel, deps: needs.map(moduleName) });
  }
  const builtin = new Set(readLines(path.join(dir, 'modules.builtin'), false).filter(Boolean).map(moduleName));
  const builtinAliases = new Set<string>();
  try {
    // NUL-separated "module.key=value" records of the modules built into the kernel.
    for (const rec of fs.readFileSync(path.join(dir, 'modules.builtin.modinfo'), 'latin1').split('\0')) {
      const m = /^[^.=]+\.alias=(.+)$/.exec(rec);
      if (m) builtinAliases.add(m[1]);
    }
  } catch {
    // older kernels do not have it
  }
  const softPre = new Map<string, string[]>();
  for (const line of readLines(path.join(dir, 'modules.softdep'), false)) {
    // softdep MODULE pre: A B post: C
    const m = /^softdep\s+(\S+)\s+(.*)$/.exec(line);
    if (!m) continue;
    const pre = /pre:\s*([^:]*?)(\s+post:|$)/.exec(m[2]);
    if (pre) softPre.set(norm(m[1]), [...(softPre.get(norm(m[1])) ?? []), ...pre[1].split(/\s+/).filter(Boolean)]);
  }
  const aliases = new Map<string, string[]>();
  for (const line of readLines(path.join(dir, 'modules.alias'), false)) {
    const m = /^alias\s+(\S+)\s+(\S+)$/.exec(line);
    if (m && !/[*?[]/.test(m[1])) aliases.set(m[1], [...(aliases.get(m[1]) ?? []), norm(m[2])]);
  }
  return { dir, deps, builtin, builtinAliases, softPre, aliases };
}

/**
 * The modules (with their dependencies) needed to load `names` into kernel `release`.
 * An unknown name is an error; an unresolvable soft dependency is skipped (it is optional).
 */
export function resolveModules(release: string, names: string[], root = '/lib/modules'): KernelModule[] {
  const index = loadIndex(path.join(root, release));
  const out: KernelModule[] = [];
  const done = new Set<string>();
  const visiting = new Set<string>();

  const visit = (wanted: string, required: boolean): void => {
    const name = norm(wanted);
    if (done.has(name) || index.builtin.has(name)) return;
    const entry = index.deps.get(name);
    if (!entry) {
      // As kmod: an alias names loadable modules first; built-in ones satisfy it otherwise.
      const targets = index.aliases.get(wanted);
      if (targets) return targets.forEach((t) => visit(t, false));
      if (index.builtinAliases.has(wanted)) return;
      if (required) throw new ImageError('NOT_FOUND', `kernel ${release} has no module '${name}' (not in ${index.dir}/modules.dep)`);
      return;
    }
    if (visiting.has(name)) throw new ImageError('CORRUPT', `modules.dep of ${release}: dependency cycle through ${name}`);
    visiting.add(name);
    for (const soft of index.softPre.get(name) ?? []) visit(soft, false);
    for (const dep of entry.deps) visit(dep, true);
    visiting.delete(name);
    done.add(name);
    out.push({ name, path: path.join(index.dir, entry.rel) });
  };
  for (const name of names) visit(name, true);
  return out;
}

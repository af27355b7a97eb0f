/**
 * Finding a differencing VDI's parent. VirtualBox records the parent only by UUID
 * (uuidLinkage = the parent's uuidCreate; uuidParentModify = the parent's uuidModify when
 * the child was made) and keeps the file names in its media registry, so img looks for the
 * parent among the .vdi files in the child's directory: a bounded scan reading one header
 * sector of each.
 */
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { ImageError } from '../../block/errors';
import { HostFile } from '../../io/host-file';
import { F, HEADER_SECTOR, isVdi } from './header';
import { uuidFromDisk } from './uuid';

/** Directory entries looked at, at most: a directory holding more is not searched further. */
export const MAX_PARENT_SCAN = 4096;

interface Candidate {
  file: string;
  uuidCreate: string;
  uuidModify: string;
}

async function readIds(file: string): Promise<Candidate | undefined> {
  let f: HostFile | undefined;
  try {
    f = await HostFile.open(file, { readOnly: true });
    const head = new Uint8Array(HEADER_SECTOR);
    await f.read(0, head);
    if (!isVdi(head)) return undefined;
    return { file, uuidCreate: uuidFromDisk(head, F.uuidCreate), uuidModify: uuidFromDisk(head, F.uuidModify) };
  } catch {
    return undefined; // unreadable files are simply not candidates
  } finally {
    await f?.close();
  }
}

/**
 * The file in `child`'s directory whose uuidCreate is `linkage`. Several matches (copies of
 * one image) are narrowed by `parentModify`; what still is ambiguous, or nothing found, is an
 * error naming the UUID and the directory.
 */
export async function findParent(child: string, linkage: string, parentModify: string): Promise<string> {
  const dir = path.dirname(child);
  const self = await fs.realpath(child);
  let names: string[];
  try {
    names = (await fs.readdir(dir)).filter((n) => n.toLowerCase().endsWith('.vdi')).sort();
  } catch (err) {
    throw new ImageError('NOT_FOUND', `cannot list ${dir} to find the parent image ${linkage}: ${(err as Error).message}`, { file: child });
  }
  const scanned = names.slice(0, MAX_PARENT_SCAN);
  const matches: Candidate[] = [];
  for (const name of scanned) {
    const file = path.join(dir, name);
    if ((await fs.realpath(file).catch(() => file)) === self) continue;
    const c = await readIds(file);
    if (c && c.uuidCreate === linkage) matches.push(c);
  }
  if (matches.length === 0) {
    const more = names.length > scanned.length ? ` (only the first ${MAX_PARENT_SCAN} of ${names.length} were looked at)` : '';
    throw new ImageError(
      'NOT_FOUND',
      `parent image with UUID ${linkage} not found among the ${scanned.length} .vdi files in ${dir}${more}: give the parent explicitly`,
      { file: child, field: 'uuidLinkage', value: linkage },
    );
  }
  if (matches.length === 1) return matches[0].file;
  const exact = matches.filter((m) => m.uuidModify === parentModify);
  if (exact.length === 1) return exact[0].file;
  throw new ImageError(
    'INVALID_ARGUMENT',
    `parent image with UUID ${linkage} is ambiguous: ${(exact.length ? exact : matches).map((m) => path.basename(m.file)).join(', ')} all match; give the parent explicitly`,
    { file: child, field: 'uuidLinkage', value: linkage },
  );
}

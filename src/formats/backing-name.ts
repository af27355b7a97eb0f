/** Backing and data file names as qemu resolves them (kept apart from the registry to avoid import cycles). */
import * as path from 'node:path';

/**
 * Relative names are relative to the directory of the image that names them; URLs are left
 * alone. Joined as qemu's path_combine joins them — the image's name up to its last '/', then
 * the backing name, nothing normalized — so "b/mid.qcow2" naming "../base" is "b/../base"
 * (what qemu-img info shows as the full backing file name).
 */
export function resolveBackingName(imageFilename: string, backing: string): string {
  if (path.isAbsolute(backing) || /^[a-z0-9+]+:\/\//i.test(backing)) return backing;
  return imageFilename.slice(0, imageFilename.lastIndexOf('/') + 1) + backing;
}

/** Backing and data file names as qemu resolves them (kept apart from the registry to avoid import cycles). */
import * as path from 'node:path';

/** Relative names are relative to the directory of the image that names them; URLs are left alone. */
export function resolveBackingName(imageFilename: string, backing: string): string {
  if (path.isAbsolute(backing) || /^[a-z0-9+]+:\/\//i.test(backing)) return backing;
  return path.join(path.dirname(imageFilename), backing);
}

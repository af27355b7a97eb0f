/**
 * A convert target that appears under its final name only when complete: the image is
 * created under a temporary name in the same directory (so the rename cannot cross file
 * systems) and renamed over the final name after its last flush. On failure the temporary
 * file is removed and an existing file under the final name is left untouched.
 */
import * as fsSync from 'node:fs';
import * as fs from 'node:fs/promises';
import * as path from 'node:path';
import { fromSystemError } from '../block/errors';
import { CreateOptions, Image } from '../block/image';
import { findFormat, openImage } from '../formats/index';

export interface StagedTarget {
  readonly image: Image;
  /** Flushes, closes and renames the image to its final name. */
  commit(): Promise<void>;
  /** Closes and deletes the temporary image; returns `err` reworded to name the final file. Never throws. */
  abort(err: unknown): Promise<unknown>;
}

/** Temporary files of targets being written, for removeStagingFiles. */
const staging = new Set<string>();

/**
 * Removes every temporary target file still being written, synchronously: for a program
 * about to exit on a signal (the CLI does this on SIGINT and SIGTERM).
 */
export function removeStagingFiles(): void {
  for (const name of staging) fsSync.rmSync(name, { force: true });
  staging.clear();
}

/** The temporary name: hidden, in the final name's directory, unique to this process and call. */
function stagingName(finalName: string): string {
  const unique = `${process.pid}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
  return path.join(path.dirname(finalName), `.${path.basename(finalName)}.img-${unique}.tmp`);
}

export async function stageTarget(format: string, finalName: string, opts: CreateOptions): Promise<StagedTarget> {
  const fmt = findFormat(format);
  const temp = stagingName(finalName);
  const removeTemp = () => {
    staging.delete(temp);
    return fs.rm(temp, { force: true }).catch(() => undefined);
  };
  staging.add(temp);
  let image: Image;
  try {
    await fmt.create(temp, { ...opts, finalName });
    image = await openImage(temp, { format, readOnly: false });
  } catch (err) {
    await removeTemp();
    throw renamed(err, temp, finalName);
  }
  return {
    image,
    async commit() {
      try {
        await image.flush();
        await image.close();
        await fs.rename(temp, finalName).catch((err) => {
          throw fromSystemError(err, finalName);
        });
        staging.delete(temp);
      } catch (err) {
        await removeTemp();
        throw renamed(err, temp, finalName);
      }
    },
    async abort(err: unknown) {
      const dataFiles = image.dataFiles ?? [];
      await image.close().catch(() => undefined);
      await removeTemp();
      for (const f of dataFiles) await fs.rm(f, { force: true }).catch(() => undefined);
      return renamed(err, temp, finalName);
    },
  };
}

/** Errors about the temporary file name the final file instead: that is the name the user knows. */
function renamed(err: unknown, temp: string, finalName: string): unknown {
  if (err instanceof Error && err.message.includes(temp)) err.message = err.message.split(temp).join(finalName);
  return err;
}

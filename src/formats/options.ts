/** Parsing of -o option values shared by every format. */
import { ImageError } from '../block/errors';

const SUFFIX: Record<string, number> = { '': 1, b: 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40, p: 2 ** 50, e: 2 ** 60 };

/**
 * A size as qemu-img accepts it: bytes, or a number with a k/M/G/T/P/E suffix (powers of 1024).
 * Fractions are allowed with a suffix ("1.5G"). Results must be whole bytes and ≤ 2^53.
 */
export function parseSize(text: string, what = 'size'): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([bkmgtpe]?)\s*$/i.exec(text);
  if (!m) throw new ImageError('INVALID_ARGUMENT', `invalid ${what} '${text}': expected a number with an optional k, M, G, T, P or E suffix`);
  const v = Number(m[1]) * SUFFIX[m[2].toLowerCase()];
  if (!Number.isSafeInteger(v)) throw new ImageError('INVALID_ARGUMENT', `invalid ${what} '${text}': not a whole number of bytes below 2^53`);
  return v;
}

export function parseBool(text: string, what: string): boolean {
  const t = text.toLowerCase();
  if (['on', 'yes', 'true', '1'].includes(t)) return true;
  if (['off', 'no', 'false', '0'].includes(t)) return false;
  throw new ImageError('INVALID_ARGUMENT', `invalid value '${text}' for ${what}: expected on or off`);
}

export const PREALLOCATION_MODES = ['off', 'metadata', 'falloc', 'full'] as const;
export type Preallocation = (typeof PREALLOCATION_MODES)[number];

export function parsePreallocation(text: string): Preallocation {
  if (!(PREALLOCATION_MODES as readonly string[]).includes(text)) {
    throw new ImageError('INVALID_ARGUMENT', `invalid preallocation mode '${text}': expected one of ${PREALLOCATION_MODES.join(', ')}`);
  }
  return text as Preallocation;
}

/** Splits "-o a=1,b=2" (commas inside values are written ",," as in qemu). */
export function parseOptionList(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  const parts: string[] = [];
  let cur = '';
  for (let i = 0; i < text.length; i++) {
    if (text[i] === ',' && text[i + 1] === ',') {
      cur += ',';
      i++;
    } else if (text[i] === ',') {
      parts.push(cur);
      cur = '';
    } else cur += text[i];
  }
  parts.push(cur);
  for (const p of parts) {
    if (p === '') continue;
    const eq = p.indexOf('=');
    if (eq < 0) out[p] = p === 'help' || p === '?' ? 'help' : 'on';
    else out[p.slice(0, eq)] = p.slice(eq + 1);
  }
  return out;
}

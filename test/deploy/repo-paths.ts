/** Paths of the repository's deployment files, from the compiled test's location. */
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';

/** The repository root (this file runs as dist/test/deploy/repo-paths.js). */
export const REPO_ROOT = fileURLToPath(new URL('../../../', import.meta.url));
export const SYSTEMD_DIR = join(REPO_ROOT, 'systemd');
export const PROVISIONING_DIR = join(REPO_ROOT, 'provisioning');

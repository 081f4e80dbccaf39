/** Where everything lives on the board (docs/CONTRACTS.md, "On the board"). */
export const BOARD = {
  /** A relative symlink to releases/VERSION (the running release); every path below it stays valid across upgrades. */
  agentDir: '/opt/sensor-agent',
  /** Agent trees, one per version (/opt/sensor-agent-releases/VERSION), root-owned and read-only. */
  releasesDir: '/opt/sensor-agent-releases',
  releasesRel: 'sensor-agent-releases',
  configDir: '/etc/sensor-agent',
  config: '/etc/sensor-agent/config.json',
  trust: '/etc/sensor-agent/trust.jwks',
  trustRel: 'trust.jwks',
  /** The release key(s) upgrades must be signed by (public; absent = upgrades refused). */
  releaseKeys: '/etc/sensor-agent/release.jwks',
  releaseKeysRel: 'release.jwks',
  ca: '/etc/sensor-agent/ca.pem',
  caRel: 'ca.pem',
  clientCert: '/etc/sensor-agent/client.crt',
  clientCertRel: 'client.crt',
  clientKey: '/etc/sensor-agent/client.key',
  clientKeyRel: 'client.key',
  hooksDir: '/etc/sensor-agent/hooks',
  /** Left by flash when the agent's user could not be created yet; removed by the first-boot hand-over. */
  firstbootPending: '/etc/sensor-agent/firstboot.pending',
  stateRoot: '/var/lib/sensor-agent',
  keystore: '/var/lib/sensor-agent/keys',
  stateDir: '/var/lib/sensor-agent/state',
  enrollToken: '/var/lib/sensor-agent/enroll.token',
  /** The upgrade guard's root-only state (StateDirectory= of sensor-agent-upgrade.service): cleared by a re-flash. */
  upgradeStateDir: '/var/lib/sensor-agent-upgrade',
  unitDir: '/etc/systemd/system',
  agentUnit: '/etc/systemd/system/sensor-agent.service',
  firstbootUnit: '/etc/systemd/system/sensor-agent-firstboot.service',
  wantsDir: '/etc/systemd/system/multi-user.target.wants',
  enableLink: '/etc/systemd/system/multi-user.target.wants/sensor-agent.service',
  upgradeUnit: '/etc/systemd/system/sensor-agent-upgrade.service',
  upgradePath: '/etc/systemd/system/sensor-agent-upgrade.path',
  upgradeEnableLink: '/etc/systemd/system/multi-user.target.wants/sensor-agent-upgrade.service',
  pathsWantsDir: '/etc/systemd/system/paths.target.wants',
  upgradePathEnableLink: '/etc/systemd/system/paths.target.wants/sensor-agent-upgrade.path',
  /** The root upgrade guard (provisioning/upgrade-guard): never part of a release. */
  guardDir: '/usr/lib/sensor-agent',
  guard: '/usr/lib/sensor-agent/upgrade-guard',
  sysusersDir: '/etc/sysusers.d',
  sysusers: '/etc/sysusers.d/sensor-agent.conf',
  libexecDir: '/usr/local/lib/sensor-agent',
  firstbootScript: '/usr/local/lib/sensor-agent/firstboot',
  cliWrapper: '/usr/local/bin/sensor-agent',
  /** The image's own Node.js (what `--node system` trees run on). */
  node: '/usr/bin/node',
  /** What the unit runs: the tree's Node, or a link to BOARD.node for `--node system` trees. */
  agentNode: '/opt/sensor-agent/node/bin/node',
  agentBundle: '/opt/sensor-agent/sensor-agent.mjs',
  /** Where the image's Debian packages (and so its nodejs version) are listed. */
  dpkgStatus: '/var/lib/dpkg/status',
} as const;

/** The agent's user as systemd/sysusers.d/sensor-agent.conf creates it. */
export const AGENT_USER = 'sensor-agent';

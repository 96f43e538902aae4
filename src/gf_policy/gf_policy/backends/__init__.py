"""Policy backends shipped with the workspace (registered as gf.policy_backends entry points)."""

# Carried by every claim token: the runner revokes its own token before the formula starts.
path "auth/token/revoke-self" {
  capabilities = ["update"]
}

package oidc

import (
	"context"
	"encoding/base64"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/ecr"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"github.com/aws/smithy-go"
	"github.com/ghcr-pull/ghcr-pull/internal/failure"
	"github.com/ghcr-pull/ghcr-pull/internal/ghcr"
)

// exchangeAWS: STS AssumeRoleWithWebIdentity (unsigned), then ECR
// GetAuthorizationToken with the session; the token is base64 "AWS:<pw>".
// Both clients go through the AWS SDK, which honours AWS_ENDPOINT_URL_STS
// and AWS_ENDPOINT_URL_ECR (read here through c.Getenv, so tests and
// sovereign clouds can point them elsewhere). The SDK's own retries are off:
// internal/retry retries what is transient, visibly.
func exchangeAWS(ctx context.Context, c Config, jwt string, mask func(string)) (string, string, error) {
	region, err := c.awsRegion()
	if err != nil {
		return "", "", err
	}
	creds, err := assumeRole(ctx, c, region, jwt, mask)
	if err != nil {
		return "", "", err
	}
	ecrClient := ecr.New(ecr.Options{
		Region:           region,
		BaseEndpoint:     c.awsEndpoint("AWS_ENDPOINT_URL_ECR"),
		Credentials:      credentials.StaticCredentialsProvider{Value: creds},
		RetryMaxAttempts: 1,
		HTTPClient:       c.client(),
	})
	auth, err := ecrClient.GetAuthorizationToken(ctx, &ecr.GetAuthorizationTokenInput{})
	if err != nil {
		return "", "", classifyAWS(AWSECR, err, "ecr:GetAuthorizationToken", "give the role ecr:GetAuthorizationToken (and ecr:BatchGetImage, ecr:GetDownloadUrlForLayer on the repository)")
	}
	if len(auth.AuthorizationData) == 0 || auth.AuthorizationData[0].AuthorizationToken == nil {
		return "", "", &ExchangeError{Provider: AWSECR, Step: "ecr:GetAuthorizationToken", Message: "no authorization data in the answer"}
	}
	decoded, err := base64.StdEncoding.DecodeString(aws.ToString(auth.AuthorizationData[0].AuthorizationToken))
	if err != nil {
		return "", "", &ExchangeError{Provider: AWSECR, Step: "ecr:GetAuthorizationToken", Message: "authorization token is not base64"}
	}
	user, password, ok := strings.Cut(string(decoded), ":")
	if !ok || password == "" {
		return "", "", &ExchangeError{Provider: AWSECR, Step: "ecr:GetAuthorizationToken", Message: "authorization token is not user:password"}
	}
	mask(password)
	return user, password, nil
}

// awsEndpoint is an SDK client's endpoint override, nil for the default.
func (c Config) awsEndpoint(env string) *string {
	if v := c.endpoint(env, ""); v != "" {
		return aws.String(v)
	}
	return nil
}

// stsClient is STS in region, regional endpoint (the SDK's default), no
// SDK retries.
func (c Config) stsClient(region string, creds aws.CredentialsProvider) *sts.Client {
	return sts.New(sts.Options{
		Region:           region,
		BaseEndpoint:     c.awsEndpoint("AWS_ENDPOINT_URL_STS"),
		Credentials:      creds,
		RetryMaxAttempts: 1,
		HTTPClient:       c.client(),
	})
}

// assumeRole is sts:AssumeRoleWithWebIdentity (unsigned) with the ID
// token: the role's session credentials, masked.
func assumeRole(ctx context.Context, c Config, region, jwt string, mask func(string)) (aws.Credentials, error) {
	role, err := c.stsClient(region, aws.AnonymousCredentials{}).AssumeRoleWithWebIdentity(ctx, &sts.AssumeRoleWithWebIdentityInput{
		RoleArn:          aws.String(c.AWSRoleARN),
		RoleSessionName:  aws.String("ghcr-pull"),
		WebIdentityToken: aws.String(jwt),
	})
	if err != nil {
		return aws.Credentials{}, classifyAWS(c.Provider, err, "sts:AssumeRoleWithWebIdentity",
			"check the role's trust policy: it must allow sts:AssumeRoleWithWebIdentity for the token.actions.githubusercontent.com provider, with aud sts.amazonaws.com and a sub condition matching this repository")
	}
	rc := role.Credentials
	if rc == nil || rc.AccessKeyId == nil || rc.SecretAccessKey == nil {
		return aws.Credentials{}, &ExchangeError{Provider: c.Provider, Step: "sts:AssumeRoleWithWebIdentity", Message: "no credentials in the answer"}
	}
	mask(aws.ToString(rc.SecretAccessKey))
	mask(aws.ToString(rc.SessionToken))
	creds := aws.Credentials{AccessKeyID: aws.ToString(rc.AccessKeyId), SecretAccessKey: aws.ToString(rc.SecretAccessKey),
		SessionToken: aws.ToString(rc.SessionToken), Source: "AssumeRoleWithWebIdentity"}
	if rc.Expiration != nil {
		creds.CanExpire, creds.Expires = true, *rc.Expiration
	}
	return creds, nil
}

// classifyAWS places an SDK error: a 4xx API error is configuration, the
// rest transient. The SDK's messages carry no request body.
func classifyAWS(provider string, err error, step, fix string) error {
	var redirect *RedirectError
	if errors.As(err, &redirect) {
		return redirect
	}
	status := 0
	var re *awshttp.ResponseError
	if errors.As(err, &re) {
		status = re.HTTPStatusCode()
		if status >= 300 && status < 400 && re.Response != nil && re.Response.Response != nil {
			// The SDK does not follow it either; say why it failed.
			r := re.Response.Response
			loc, _ := r.Location()
			where := &RedirectError{Endpoint: provider + " " + step}
			if r.Request != nil {
				where.Endpoint = endpointOf(r.Request.URL)
			}
			if loc != nil {
				where.Location = endpointOf(loc)
			}
			return where
		}
	}
	msg := err.Error()
	var api smithy.APIError
	if errors.As(err, &api) {
		msg = api.ErrorCode() + ": " + api.ErrorMessage()
	}
	msg = failure.Clip(msg)
	if status >= 400 && status < 500 && status != http.StatusTooManyRequests {
		return &ExchangeError{Provider: provider, Step: step, Status: status, Message: msg, Fix: fix}
	}
	// The SDK's own retries are off, so its throttling delay is too: the
	// answer's Retry-After, when AWS sends one, is what internal/retry waits.
	var after time.Duration
	if re != nil && re.Response != nil && re.Response.Response != nil {
		after = ghcr.ParseRetryAfter(re.Response.Header.Get("Retry-After"), time.Now())
	}
	return &failure.Transient{Response: failure.Response{Status: status, Message: msg, Where: provider + " " + step}, RetryAfter: after}
}
